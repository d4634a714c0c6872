"""The real parsers on synthetic files in the real DeepFluoro / Ljubljana layout and constants.

The files (tests/real_layout.py) are written from the embedded CT with the real detector,
intrinsics, posterior (DeepFluoro) or AP + lateral (Ljubljana) cameras, rot-180 flags and the
collimator border, rendered by an independent ray caster. Checked through the dataset's ``parse``
and ``regbench.data.checks`` (what `regbench check-data` runs on the real files).
"""

from __future__ import annotations

import numpy as np
import pytest
from configs import paper_config
from real_layout import write_deepfluoro, write_ljubljana

from regbench.check_data import check_subject
from regbench.data import datasets
from regbench.data.checks import failures
from regbench.geometry.priors import PosePrior, prior_zscores

HEIGHT = 64


def parse(dataset: str, subject: str, path, cfg: dict):
    spec = {**cfg["datasets"][dataset], "spacing_mm": 4.0 if dataset == "deepfluoro" else None}
    return datasets.get(dataset).parse(subject, spec, path, HEIGHT)


@pytest.fixture(scope="module")
def cfg():
    return paper_config()


@pytest.fixture(scope="module")
def deepfluoro(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("df") / "ipcai_2020_full_res_data.h5"
    write_deepfluoro(path, views=4)
    prepared, xrays = parse("deepfluoro", "specimen1", path, cfg)
    prior = datasets.resolve_prior(cfg, "deepfluoro", "specimen1")
    report = check_subject(
        "deepfluoro", "specimen1", load(prepared, xrays), xrays, prior, cfg, path
    )
    return path, prepared, xrays, report


@pytest.fixture(scope="module")
def ljubljana(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("lj") / "ljubljana.h5"
    write_ljubljana(path)
    out = {}
    for view in ("ap", "lat"):
        subject = f"subject01-{view}"
        prepared, xrays = parse("ljubljana", subject, path, cfg)
        prior = datasets.resolve_prior(cfg, "ljubljana", subject)
        report = check_subject("ljubljana", subject, load(prepared, xrays), xrays, prior, cfg, path)
        out[view] = prepared, xrays, report
    return path, out


def load(prepared, xrays):
    from regbench.data.subject import Prepared

    return Prepared(prepared.ct, prepared.affine, prepared.landmarks, xrays.geometry)


def test_deepfluoro_layout_as_parsed(deepfluoro):
    _, prepared, xrays, _ = deepfluoro
    assert len(prepared.landmarks) == 14 and len(xrays) == 4
    assert xrays.geometry["sdd"] == pytest.approx(1020.0, abs=1e-3)
    assert xrays.images.shape[-2:] == (HEIGHT, HEIGHT)
    # render_labels: only pelvis labels keep their HU, the femur stand-ins (5, 6) are air
    femur = np.isin(prepared.mask, [5, 6])
    assert femur.any() and (prepared.ct[femur] == -1000.0).all()


def test_ground_truth_reprojects_the_files_2d_landmarks(deepfluoro, ljubljana):
    report = deepfluoro[3]
    assert (report["reprojection_px"] < 0.05).all(), report["reprojection_px"].tolist()
    for _, _, view_report in ljubljana[1].values():
        assert (view_report["reprojection_px"] < 0.05).all()


def test_ground_truth_lies_inside_its_dataset_and_view_prior(deepfluoro, ljubljana, cfg):
    assert (deepfluoro[3]["max_abs_z"] < 3.0).all(), deepfluoro[3]["max_abs_z"].tolist()
    for view, (_, _, report) in ljubljana[1].items():
        assert (report["max_abs_z"] < 3.0).all(), (view, report["max_abs_z"].tolist())
    # The global AP prior (every dataset's before per-dataset priors) does not contain them.
    global_prior = PosePrior.from_config(cfg["prior"])
    assert prior_zscores(global_prior, deepfluoro[2].poses).abs().max() > 10
    assert prior_zscores(global_prior, ljubljana[1]["lat"][1].poses).abs().max() > 10


def test_ncc_at_ground_truth_beats_perturbed_poses(deepfluoro, ljubljana):
    report = deepfluoro[3]
    assert (report["ncc_gt"] > report["ncc_perturbed_max"]).all(), report.to_string()
    for view, (_, _, r) in ljubljana[1].items():
        assert (r["ncc_gt"] > r["ncc_perturbed_max"]).all(), (view, r.to_string())
        assert (r["ncc_gt"] > r["ncc_flipped"]).all(), (view, r.to_string())


def test_check_data_passes_and_names_subject_and_check_when_off(deepfluoro, cfg):
    _, prepared, xrays, report = deepfluoro
    assert failures(report) == []
    wrong = check_subject(
        "deepfluoro",
        "specimen1",
        load(prepared, xrays),
        xrays,
        cfg["prior"],
        cfg,
        None,
        max_xrays=1,
    )
    problems = failures(wrong)
    assert len(problems) == 1 and problems[0].startswith("specimen1: ground-truth pose lies")
