import numpy as np
import pandas as pd
import pytest

from regbench.data.landmarks import label_centroids, read_landmarks
from regbench.data.volumes import read_mask, volume_center, world_to_voxel
from regbench.errors import InputError


def test_landmarks_include_off_axis_bones_and_skip_cut_labels(prepared):
    names = set(prepared.landmarks["name"])
    assert len(names) >= 4
    assert any(n.startswith("vertebrae_") for n in names)
    assert any(n.startswith("rib_") for n in names)
    # C7, L2 and L3 touch the field of view's border in this CT: cut, so skipped.
    assert not {"vertebrae_C7", "vertebrae_L2", "vertebrae_L3"} & names
    xyz = prepared.points
    # Off-axis: the cloud spreads far from the cranio-caudal (z) axis in x.
    assert xyz[:, 0].std() > 30.0


def test_landmarks_lie_inside_the_volume(prepared):
    ijk = world_to_voxel(prepared.affine, prepared.points)
    assert (ijk > -0.5).all() and (ijk < np.asarray(prepared.ct.shape) - 0.5).all()


def test_prepared_ct_is_centred_and_landmarks_match_the_mask(prepared_dir, prepared):
    assert np.allclose(volume_center(prepared.affine, prepared.ct.shape), 0.0, atol=1e-6)
    spacing = np.linalg.norm(prepared.affine[:3, :3], axis=0)
    assert np.allclose(spacing, 6.0)
    mask, mask_affine = read_mask(prepared_dir / "mask.nii.gz", prepared.ct.shape)
    assert np.allclose(mask_affine, prepared.affine)
    # The centroid of the resampled label, mapped with the affine, is the landmark (up to
    # resampling): world coordinates and the affine agree.
    from regbench.data.embedded import embedded_files, landmark_labels

    labels = {v: k for k, v in landmark_labels(pd.read_csv(embedded_files()[2])).items()}
    row = prepared.landmarks.set_index("name").loc["vertebrae_T8"]
    idx = np.argwhere(mask == labels["vertebrae_T8"]).mean(axis=0)
    world = idx @ prepared.affine[:3, :3].T + prepared.affine[:3, 3]
    assert np.linalg.norm(world - row[["x", "y", "z"]].to_numpy(float)) < 6.0


def test_label_centroids_on_a_synthetic_mask():
    mask = np.zeros((20, 20, 20), dtype=np.int32)
    mask[4:7, 4:7, 4:7] = 1  # complete, centroid at voxel (5, 5, 5)
    mask[0:3, 10:12, 10:12] = 2  # touches the border: cut by the field of view
    mask[12, 12, 12] = 3  # too small
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    df = label_centroids(mask, affine, {1: "a", 2: "b", 3: "c", 4: "absent"}, min_voxels=5)
    assert df["name"].tolist() == ["a"]
    assert np.allclose(df[["x", "y", "z"]].to_numpy()[0], [0.0, 10.0, 15.0])


def test_landmark_file_checks(tmp_path):
    path = tmp_path / "landmarks.csv"
    pd.DataFrame({"name": list("abc"), "x": [0, 1, 2], "y": [0, 0, 0], "z": [0, 0, 0]}).to_csv(
        path, index=False
    )
    with pytest.raises(InputError, match="at least 4"):
        read_landmarks(path)
    pd.DataFrame({"name": list("abcd"), "x": [0, 1, 2, 3], "y": [0] * 4}).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing columns"):
        read_landmarks(path)
    pts = pd.DataFrame({"name": list("abcd"), "x": [0, 1, 2, 300], "y": [0] * 4, "z": [0] * 4})
    pts.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"outside the CT volume: \['d'\]"):
        read_landmarks(path, np.eye(4), (10, 10, 10))
