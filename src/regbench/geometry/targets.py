"""The gradient targets of similarity training, each distance in the frame its paper uses.

The trainer differentiates the learned similarity with respect to a right perturbation
``start @ exp(xi)`` of the camera-to-world start pose (``xi = (omega [rad], v [mm])`` in the
camera frame, source at the origin; see :mod:`regbench.geometry.poses`) and matches the
directions of the rotation and translation parts of that gradient to
``g* = d/dxi 1/2 d(start @ exp(xi), pose_gt)^2`` at ``xi = 0``. :func:`training_target`
returns ``g*`` in those same raw camera-frame coordinates, so the caller needs no frame change.

The two distances
-----------------
* ``"se3"`` (ProST, Gao et al. 2020): ProST parameterises the transform that maps its camera
  frame, whose origin is the C-arm isocentre on the principal ray, to the CT, and scores two
  such transforms with geomstats' left-canonical metric on SE(3) in vector form (rotation
  vector, translation). That metric's logarithm is the point's own coordinates, so its
  distance is the product metric ``theta(R_a^T R_b)^2 + |t_a - t_b|^2``, not the twist
  (``V^-1``-coupled) log. In regbench terms, with ``c`` the isocentre in camera coordinates
  and ``L`` the translation scale, ``d^2 = theta^2 + |pose_a c - pose_b c|^2 / L^2``: the
  rotation angle plus the distance the isocentre point, carried rigidly by each camera,
  moves in the world. ``c`` is the CT centre (world origin) seen from ``pose_gt``.
  ProST scales translation by half the CT's extent and differentiates with respect to its
  own (rotation vector, translation) coordinates; here both kinds take the caller's ``L``
  and the trainer's increments, so that only the distance and its frame differ.
* ``"so4"`` (this paper): each camera-to-world pose, as it lives in the CT's world frame
  (source about 850 mm from the CT centre), is embedded in SO(4) as the polar factor of
  ``[[R, t/L], [0, 1]]`` (:func:`regbench.geometry.so4.so4_embed`); the distance is the
  bi-invariant one, ``|log(P_a^T P_b)|_F / sqrt(2)``.

Where they differ (first order)
-------------------------------
Near the truth both targets are ``g* = -G xi_ab`` with ``pose_gt = start @ exp(xi_ab)`` and
``G`` the 6x6 metric each distance induces at the start (:func:`pose_metric`). The trainer
normalises the rotation and translation parts of ``g*`` separately, so two targets give the
same directions for every perturbation iff, in the trainer's coordinates,
``G_2 = diag(a I3, b I3) G_1`` for some ``a, b > 0``.

* ProST: block-diagonal in the frame at ``c`` (axes of the camera), ``diag(I3, I3 / L^2)``.
* SO(4) at a pose whose world origin sits at distance ``D`` from the source
  (``|u| = D / L``, ``phi = arctan(|u| / 2)``): block-diagonal in the frame at the *midpoint*
  ``m`` of source and world origin (exactly: the cross terms vanish there), and anisotropic
  about the source-origin axis ``a``: rotation about ``a`` weighs 1, about axes through
  ``m`` normal to ``a`` ``cos^2(phi/2)``; translation along ``a`` weighs
  ``(cos^2(phi) / (2 L))^2``, normal to ``a`` ``(sin(phi/2) / (tan(phi) L))^2``.
  At the default geometry (``D = 850``, ``L = 510``): 1 / 0.884 and 0.087 / 0.167 (times
  ``1/L^2``), i.e. depth translation counts about half as much as in-plane translation.
  At ``u = 0`` it is ``diag(I3, I3 / (4 L^2))``.

Hence, in the camera frame: pure translations along the ray or normal to it and pure
rotations about the source or about the isocentre around the ray or normal to it give the
same rotation directions and (where defined) translation directions; the targets differ
for oblique translations (the SO(4) depth weight), for rotations about oblique axes, and
above all for rotations about the isocentre, where the ProST translation target is exactly
zero while the SO(4) one is ``G_tt (omega x (m - c))``, the midpoint's lever arm; typical
training starts (angles about the isocentre plus a source offset) are of this kind.

They provably coincide to first order when the SO(4) embedding is taken at ``u = 0`` in the
frame where ProST's metric is block-diagonal, i.e. with the camera axes moved to the
isocentre (the pose's translation then vanishes at the start): both metrics are
``diag(I3, b I3)`` there (``b = 1/L^2`` vs ``1/(4 L^2)``), so per-part directions agree and
only second-order terms (finite start distances) separate them. That was the frame of the
original trainer, which is why its two variants trained on the same directions.
"""

from __future__ import annotations

import torch

from regbench.geometry.poses import invert, perturb
from regbench.geometry.so4 import TargetKind, se3_distance_sq, so4_distance_sq, so4_embed


def isocentre_in_camera(pose_gt: torch.Tensor) -> torch.Tensor:
    """(N,4,4) -> (N,3): the CT centre (world origin) in the true camera's frame [mm]; it is
    the C-arm isocentre of regbench's parameterisation, ProST's camera-frame origin."""
    return invert(pose_gt)[:, :3, 3]


def prost_distance_sq(
    pose_a: torch.Tensor, pose_b: torch.Tensor, L: float, centre: torch.Tensor
) -> torch.Tensor:
    """ProST's squared distance [rad^2] between (N,4,4) camera-to-world poses -> (N,).

    The product metric of the transforms ``pose @ [[I, c], [0, 1]]`` (camera frame re-origined
    at ``centre`` = ``c``, (N,3) or (3,) mm, the same for both poses):
    ``theta(R_a^T R_b)^2 + |pose_a c - pose_b c|^2 / L^2``.
    """
    shift = torch.eye(4, dtype=pose_a.dtype, device=pose_a.device).repeat(len(pose_a), 1, 1)
    shift[:, :3, 3] = centre.to(pose_a.dtype).expand(len(pose_a), 3)
    return se3_distance_sq(pose_a @ shift, pose_b @ shift, L)


def pose_distance_sq(
    pose: torch.Tensor, pose_gt: torch.Tensor, L: float, kind: TargetKind
) -> torch.Tensor:
    """The squared distance [rad^2] of ``kind`` between (N,4,4) poses and the truth -> (N,):
    ProST's with the isocentre seen from ``pose_gt``, or the SO(4) one of the embeddings."""
    if kind == "se3":
        return prost_distance_sq(pose, pose_gt, L, isocentre_in_camera(pose_gt.detach()))
    if kind == "so4":
        return so4_distance_sq(so4_embed(pose, L), so4_embed(pose_gt, L))
    raise ValueError(f"unknown target kind {kind!r}; expected 'se3' or 'so4'")


def pose_distance_mm(
    pose: torch.Tensor, pose_gt: torch.Tensor, L: float, kind: TargetKind
) -> torch.Tensor:
    """:func:`pose_distance_sq`'s distance times ``L``: mm-like, (N,); smoothed by 1 um at
    the truth so that its gradient stays finite there."""
    d_sq = pose_distance_sq(pose, pose_gt, L, kind)
    return L * torch.sqrt(d_sq + (1e-3 / L) ** 2)


def training_target(
    start: torch.Tensor,
    pose_gt: torch.Tensor,
    L: float,
    kind: TargetKind,
    *,
    centre: torch.Tensor | None = None,
) -> torch.Tensor:
    """``d/dxi 1/2 d(start @ exp(xi), pose_gt)^2`` at ``xi = 0`` -> (N,6), order (omega, v).

    ``xi`` is the raw camera-frame right perturbation the trainer differentiates with, so the
    target needs no frame change. ``kind="se3"``: ProST's distance (:func:`prost_distance_sq`,
    centre ``centre`` or, by default, :func:`isocentre_in_camera` of ``pose_gt``);
    ``kind="so4"``: this paper's bi-invariant SO(4) distance of the embedded world-frame poses.
    Both in rad^2 (translation over ``L`` [mm]). Computed in float64 by autograd and returned
    detached in ``start``'s dtype; a step along ``-g`` moves ``start`` towards ``pose_gt``.
    """
    start = start.unsqueeze(0) if start.dim() == 2 else start
    pose_gt = pose_gt.unsqueeze(0) if pose_gt.dim() == 2 else pose_gt
    base, gt = start.detach().double(), pose_gt.detach().double()
    if kind not in ("se3", "so4"):
        raise ValueError(f"unknown target kind {kind!r}; expected 'se3' or 'so4'")
    if kind == "se3":
        c = isocentre_in_camera(gt) if centre is None else centre.detach().double()
    with torch.enable_grad():
        xi = torch.zeros(base.shape[0], 6, dtype=torch.float64, device=base.device)
        xi.requires_grad_(True)
        moved = perturb(base, xi)
        if kind == "se3":
            d_sq = prost_distance_sq(moved, gt, L, c)
        else:
            d_sq = so4_distance_sq(so4_embed(moved, L), so4_embed(gt, L))
        (grad,) = torch.autograd.grad(0.5 * d_sq.sum(), xi)
    return grad.to(start.dtype)


def pose_metric(
    pose: torch.Tensor, L: float, kind: TargetKind, *, centre: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,4,4) -> (N,6,6): the metric ``G`` each distance induces at ``pose`` in camera-frame
    increments, the Hessian of ``1/2 d(pose @ exp(xi), pose)^2`` at 0 (first-order targets are
    ``-G xi``). ``centre`` as in :func:`training_target` (default: ``pose``'s isocentre)."""
    pose = (pose.unsqueeze(0) if pose.dim() == 2 else pose).detach().double()
    centres = isocentre_in_camera(pose) if centre is None else centre.double().reshape(-1, 3)
    out = []
    for i in range(len(pose)):
        one, c = pose[i : i + 1], centres[i % len(centres)]

        def half_sq(xi: torch.Tensor, one: torch.Tensor = one, c: torch.Tensor = c) -> torch.Tensor:
            moved = perturb(one, xi[None])
            if kind == "se3":
                return 0.5 * prost_distance_sq(moved, one, L, c)[0]
            return 0.5 * so4_distance_sq(so4_embed(moved, L), so4_embed(one, L))[0]

        out.append(torch.autograd.functional.hessian(half_sq, torch.zeros(6, dtype=torch.float64)))
    return torch.stack(out)
