"""One short DAG run on the synthetic real-layout DeepFluoro file: parse, check_data, a tiny
regressor under the dataset's posterior prior, PoseNet and DiffPose, finite rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from configs import paper_config
from real_layout import write_deepfluoro
from tiny_dag import snakemake


def test_deepfluoro_file_runs_through_the_dag(tmp_path):
    data = tmp_path / "data" / "deepfluoro"
    data.mkdir(parents=True)
    write_deepfluoro(data / "ipcai_2020_full_res_data.h5", spacing_mm=6.0, views=2)
    prior = paper_config()["datasets"]["deepfluoro"]["prior"]
    config = {
        "device": "cpu",
        "datasets": {
            "deepfluoro": {
                "subjects": ["specimen1"],
                "spacing_mm": 6.0,
                "height": 32,
                "prior": prior,
            }
        },
        "render": {"renderer": "trilinear", "n_points": 48},
        "regressor": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
        "methods": ["posenet", "diffpose"],
        "diffpose": {"max_iterations": 3},
        "evaluation": {"n_bootstrap": 10, "qualitative_xrays": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    runs = [f"results/deepfluoro/specimen1/runs/{m}.csv" for m in ("posenet", "diffpose")]
    result = snakemake(tmp_path, "--cores", "2", *runs, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    check = pd.read_csv(tmp_path / "results/deepfluoro/specimen1/checks/check_data.csv")
    assert len(check) == 2 and (check["max_abs_z"] < 3).all()
    for path in runs:
        rows = pd.read_csv(tmp_path / path)
        assert len(rows) == 2 and (rows["status"] == "ok").all()
        assert np.isfinite(rows[["mtre_mm", "est_m03", "est_m13", "est_m23"]].to_numpy()).all()
