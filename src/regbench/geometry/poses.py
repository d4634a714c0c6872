"""The one place that says what a pose is and how it is perturbed.

Conventions (used everywhere in regbench):

* A pose is a 4x4 camera-to-world matrix in mm: diffdrr's extrinsic, i.e. the matrix of the
  ``RigidTransform`` handed to ``diffdrr.drr.DRR``. diffdrr's detector applies its fixed
  ``reorient`` rotation first, so the physical camera-to-world is ``pose @ reorient``; metrics
  that compare two poses are unaffected by it.
* The *C-arm parameterization* (priors, the regressor's output, DiffPose and BOBYQA search
  spaces) is diffdrr's ``euler_angles`` with convention ``ZXY``: ``pose = [R, R t]``, so the
  angles rotate the C-arm about the world origin (the CT's isocentre) and ``t`` is the source
  position before that rotation (the AP view is ``t = (0, 850, 0)``).
* A local increment ``xi = (omega [rad], v [mm])`` acts by right perturbation,
  ``T(xi) = T0 @ exp(xi)``, with column-vector se(3) (diffdrr's ``se3_exp_map`` uses
  PyTorch3D's row-vector layout and (v, omega) order; the wrappers here hide that).
"""

from __future__ import annotations

import numpy as np
import torch
from diffdrr.pose import RigidTransform, convert, se3_log_map

from regbench.errors import InputError

ROTATION_CONVENTION = "ZXY"


def carm_pose(rotation_rad: torch.Tensor, translation_mm: torch.Tensor) -> torch.Tensor:
    """(N,3) ZXY angles + (N,3) source offsets -> (N,4,4) poses."""
    pose = convert(
        rotation_rad,
        translation_mm,
        parameterization="euler_angles",
        convention=ROTATION_CONVENTION,
    )
    return pose.matrix


def carm_params(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`carm_pose`: (N,4,4) -> ((N,3) angles in rad, (N,3) mm)."""
    rotation, translation = RigidTransform(_batched(pose)).convert(
        "euler_angles", convention=ROTATION_CONVENTION
    )
    return rotation, translation


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """(N,6) increments (omega [rad], v [mm]) -> (N,4,4) column-layout rigid transforms.

    Same values as diffdrr's ``se3_exp_map`` (PyTorch3D), whose gradients are NaN at zero
    rotation, which is exactly where gradients are taken (targets at ``xi = 0``, LM Jacobians at ``dxi = 0``). Here the
    Rodrigues coefficients switch to their Taylor series for small angles, so values and
    gradients (reverse and forward mode) stay finite and exact.
    """
    omega, v = xi[..., :3], xi[..., 3:]
    theta_sq = (omega * omega).sum(-1)
    small = theta_sq < 1e-2
    theta = torch.sqrt(theta_sq.clamp_min(1e-2))  # only used where not small
    sin, cos = torch.sin(theta), torch.cos(theta)
    t2, t4, t6 = theta_sq, theta_sq**2, theta_sq**3
    a = torch.where(small, 1 - t2 / 6 + t4 / 120 - t6 / 5040, sin / theta)
    b = torch.where(small, 0.5 - t2 / 24 + t4 / 720 - t6 / 40320, (1 - cos) / theta**2)
    c = torch.where(small, 1 / 6 - t2 / 120 + t4 / 5040 - t6 / 362880, (theta - sin) / theta**3)
    w = hat(omega)
    w2 = w @ w
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(w)
    rot = eye + a[..., None, None] * w + b[..., None, None] * w2
    jac = eye + b[..., None, None] * w + c[..., None, None] * w2
    trans = (jac @ v[..., None])[..., 0]
    top = torch.cat([rot, trans[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom = torch.cat([bottom[..., :3], torch.ones_like(bottom[..., 3:])], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def hat(omega: torch.Tensor) -> torch.Tensor:
    """(...,3) -> (...,3,3) skew matrix with ``hat(w) @ x = w x x``."""
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )


def se3_log(transform: torch.Tensor) -> torch.Tensor:
    """(N,4,4) rigid transforms -> (N,6) increments (omega, v); inverse of :func:`se3_exp`."""
    log = se3_log_map(_batched(transform).mT)
    return torch.cat([log[..., 3:], log[..., :3]], dim=-1)


def scale_translation(x: torch.Tensor, L: float) -> torch.Tensor:
    """(...,6) rotation and translation parts with the translational part times ``L``. ProST
    divides translations by a characteristic length: this maps its pose coordinates
    ``(omega, v / L)`` to camera increments ``(omega, v [mm])`` and, by the chain rule, a
    gradient w.r.t. camera increments to one w.r.t. ProST's coordinates."""
    return torch.cat([x[..., :3], L * x[..., 3:]], dim=-1)


def perturb(pose: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Right perturbation ``pose @ exp(xi)``: the increment is expressed in the camera frame."""
    return _batched(pose) @ se3_exp(xi)


def perturb_world(pose: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Left perturbation ``exp(xi) @ pose``: the increment is a motion of the world (CT) frame,
    so rotations turn about the CT's centre (the world origin of a prepared subject) and the
    translation is the isocentre's displacement, as "5 degrees / 10 mm" starts are meant."""
    return se3_exp(xi) @ _batched(pose)


def relative(pose_a: torch.Tensor, pose_b: torch.Tensor) -> torch.Tensor:
    """``pose_a^-1 @ pose_b``: the motion taking a to b, in a's camera frame."""
    return invert(pose_a) @ _batched(pose_b)


def invert(pose: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid transforms."""
    pose = _batched(pose)
    rot_t = pose[..., :3, :3].mT
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def rigidity_error(pose: torch.Tensor | np.ndarray) -> float:
    """Largest deviation of a (batch of) 4x4 from a proper rigid transform (0 when exact)."""
    pose = np.asarray(pose, dtype=np.float64).reshape(-1, 4, 4)
    rot = pose[:, :3, :3]
    orth = np.abs(rot @ np.swapaxes(rot, 1, 2) - np.eye(3)).max()
    det = np.abs(np.linalg.det(rot) - 1.0).max()
    last = np.abs(pose[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max()
    return float(max(orth, det, last))


def check_rigid(pose: torch.Tensor | np.ndarray, what: str, tol: float = 1e-3) -> None:
    """Raise :class:`InputError` naming ``what`` if any pose is not finite or not rigid.

    Rigid: an orthonormal rotation with determinant +1 (no scaling, shear or mirroring) plus a
    shift, with last row ``0 0 0 1``. ``what`` names the file (and entry) the poses came from.
    """
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape[-2:] != (4, 4):
        raise InputError(f"{what}: poses must be 4x4 matrices, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: pose contains NaN, infinite or non-numeric values")
    err = rigidity_error(arr)
    if err > tol:
        raise InputError(
            f"{what}: pose is not a rigid transform (orthonormality/det error {err:.2e} > {tol})"
        )


def _batched(pose: torch.Tensor) -> torch.Tensor:
    return pose.unsqueeze(0) if pose.dim() == 2 else pose
