"""The data part of the DAG: the paper config plans every dataset without data, a file put in
place by hand is verified without network, and the custom worked example runs end to end."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from regbench import cli
from regbench.data import datasets
from regbench.data.datasets.ctspine1k import prepare_case
from regbench.data.subject import load_prepared
from regbench.data.volumes import save_volume
from regbench.data.xrays import read_xrays
from regbench.errors import InputError
from regbench.methods import IMPLEMENTED, needs_similarity
from regbench.rendering.example_folder import make_example_custom_folder

RULES = REPO / "workflow" / "rules"
PAPER = REPO / "workflow" / "configs" / "paper.yaml"
H5 = "ipcai_2020_full_res_data.h5"


def snakemake(workdir: Path, *args: str, snakefile: Path | None = None):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile or REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def full_snakefile(tmp_path: Path) -> Path:
    """The Snakefile with the patient-agnostic rules (generalization.smk) included."""
    main = REPO / "Snakefile"
    if "generalization.smk" in main.read_text():
        return main
    wrapper = tmp_path / "Snakefile.full"  # until the Snakefile includes it
    wrapper.write_text(f'include: "{main}"\ninclude: "{RULES / "generalization.smk"}"\n')
    return wrapper


def planned_jobs(output: str) -> Counter:
    """(rule, dataset) -> number of jobs in a dry-run's job listing."""
    jobs: Counter = Counter()
    rule = None
    for line in output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            rule = match.group(1)
            continue
        match = re.match(r"^\s+wildcards: (.*)$", line)
        if match and rule:
            wildcards = dict(kv.split("=", 1) for kv in match.group(1).split(", "))
            jobs[rule, wildcards.get("dataset", "-")] += 1
            rule = None
    return jobs


def test_paper_config_plans_the_full_dag_without_data(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(
        tmp_path, "-n", "all", "--configfile", str(PAPER), snakefile=full_snakefile(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    paper = yaml.safe_load(PAPER.read_text())
    methods = [m for m in paper["methods"] if m in IMPLEMENTED]
    df, lj, ct = (paper["datasets"][d] for d in ("deepfluoro", "ljubljana", "ctspine1k"))
    agnostic = ct["agnostic"]
    cases = {*ct["subjects"], *agnostic["train_subjects"], *agnostic["test_subjects"]}

    assert jobs["download", "deepfluoro"] == 1  # one HDF5 file for all specimens
    assert jobs["download", "ljubljana"] == 1
    assert jobs["download", "ctspine1k"] == 2 * len(cases)  # CT + mask of configured cases only
    # Real X-rays: one parse job per subject writes prepared/ and xrays/.
    assert jobs["parse", "deepfluoro"] == len(df["subjects"])
    assert jobs["parse", "ljubljana"] == len(lj["subjects"])
    for dataset in ("deepfluoro", "ljubljana"):
        assert jobs["prepare", dataset] == jobs["simulate", dataset] == 0
    # Simulated X-rays: prepare every case (training cases too), simulate the registered ones.
    assert jobs["parse", "ctspine1k"] == 0
    assert jobs["prepare", "ctspine1k"] == len(cases)
    assert jobs["simulate", "ctspine1k"] == len(ct["subjects"]) + len(agnostic["test_subjects"])
    for dataset in ("deepfluoro", "ljubljana", "ctspine1k"):
        n = len(paper["datasets"][dataset]["subjects"])
        assert jobs["register", dataset] == n * len(methods), dataset
        assert jobs["train_regressor", dataset] == n, dataset
    assert not any(d in ("embedded", "embedded-cohort") for _, d in jobs)

    # Patient-agnostic: one regressor on the training cases, registrations of held-out ones.
    assert jobs["train_regressor_agnostic", "ctspine1k"] == 1
    ready = [m for m in agnostic["methods"] if m in IMPLEMENTED]
    learned = [m for m in ready if needs_similarity(m)]
    assert learned and jobs["train_similarity_agnostic", "ctspine1k"] == len(learned)
    assert jobs["register_agnostic", "ctspine1k"] == len(agnostic["test_subjects"]) * len(ready)
    assert "rule generalization_table:" in result.stdout
    # The paper's Table 3 is its generalization setting: the agnostic runs write it.
    outputs = dict(
        re.findall(r"^(?:local)?rule (\w+):\n\s+input:.*\n\s+output: (.*)$", result.stdout, re.M)
    )
    assert "table3.csv" in outputs["generalization_table"]
    assert "table3.csv" not in outputs["tables"]
    assert re.search(r"gpu=1", result.stdout)  # device: cuda requests GPUs


def test_a_config_of_the_agnostic_scenario_alone_plans_table2_only(tmp_path):
    """The validation cohort (no patient-specific subject) plans Table 2 and nothing that needs
    patient-specific runs: Tables 1 and 3, the figures and the optimiser study would have none."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    config = REPO / "workflow" / "configs" / "validation-cohort.yaml"
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert jobs["train_regressor_agnostic", "embedded-cohort"] == 1
    assert "rule generalization_table:" in result.stdout
    for rule in ("tables", "figures", "optimizer_study", "train_regressor", "register"):
        assert not any(r == rule for r, _ in jobs), rule
        assert f"rule {rule}:" not in result.stdout, rule


def test_a_file_put_by_hand_is_verified_without_network(tmp_path, capsys):
    data = tmp_path / "data" / "deepfluoro"
    data.mkdir(parents=True)
    payload = b"stands in for the 2.5 GB HDF5 file"
    (data / H5).write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    config = {"datasets": {"deepfluoro": {"subjects": ["specimen1"], "sha256": digest}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    record = f"data/deepfluoro/{H5}.sha256"

    result = snakemake(tmp_path, record)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / record).read_text().split()[0] == digest
    provenance = json.loads((data / f"{H5}.source.json").read_text())
    assert provenance["origin"] == "placed by hand" and "archive.data.jhu.edu" in provenance["url"]
    assert (data / H5).read_bytes() == payload  # the user's copy is never touched

    # What the rule runs, with another pinned digest: refused, naming both digests.
    pins = {"download": {"sha256": "0" * 64}}
    args = ["--dataset", "deepfluoro", "--file", H5, "--root", str(data)]
    assert cli.main(["download", *args, "--settings", json.dumps(pins)]) == 2
    err = capsys.readouterr().err
    assert "pinned SHA-256" in err and digest in err and "0" * 64 in err


def test_register_agnostic_takes_the_inputs_of_register():
    """register_agnostic re-declares register's inputs: keep both lists in step."""

    def input_names(text: str, header: str) -> list[str]:
        block = text.split(header, 1)[1].split("\n    output:", 1)[0]
        return re.findall(r"^\s{8}(\w+)=", block, flags=re.M)

    register = input_names((RULES / "register.smk").read_text(), "rule register:")
    agnostic = input_names(
        (RULES / "generalization.smk").read_text(), "use rule register as register_agnostic"
    )
    assert register and sorted(register) == sorted(agnostic)


def test_subject_ids_are_checked_when_planning():
    datasets.get("deepfluoro").check_subject("specimen3", {})
    datasets.get("ljubljana").check_subject("subject10-lat", {})
    assert datasets.get("ctspine1k").raw_files("liver_7", {}) == [
        "volumes/liver_7.nii.gz",
        "labels/liver_7_seg.nii.gz",
    ]
    for dataset, subject in [
        ("deepfluoro", "specimen7"),
        ("ljubljana", "subject11-ap"),
        ("ctspine1k", "mystery_case"),
        ("custom", "_hidden"),
    ]:
        with pytest.raises(InputError):
            datasets.get(dataset).check_subject(subject, {})


def test_custom_worked_example_runs_to_a_table_row(tmp_path):
    make_example_custom_folder(tmp_path / "custom_example")
    shutil.copy(REPO / "tests" / "custom" / "config.yaml", tmp_path / "config.yaml")
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    # One method and two training steps keep the test short; the DAG is the same.
    config.update(methods=["posenet"], regressor={"steps": 2, "batch_size": 2})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    result = snakemake(tmp_path, "results/tables/table1.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "tables" / "table1.csv")
    row = table[(table["Dataset"] == "custom") & (table["Method"] == "posenet")]
    assert len(row) == 1 and row["N"].iloc[0] == 2  # both X-rays of the example
    assert np.isfinite(row[["Median (mm)", "Run time (s)"]].to_numpy(float)).all()
    subject = tmp_path / "results" / "custom" / "example"
    index = pd.read_csv(subject / "xrays" / "index.csv", dtype={"xray_id": str})
    assert index["xray_id"].tolist() == ["xray000", "xray001"]
    geometry = json.loads((subject / "prepared" / "geometry.json").read_text())
    assert (geometry["height"], geometry["width"]) == (32, 32)  # downsampled to geometry.height


@pytest.mark.parametrize("dataset", ["deepfluoro", "ljubljana"])
def test_hdf5_subject_is_parsed_into_the_data_contract(dataset, tmp_path):
    """`regbench parse` as the rule calls it, on the parsers' synthetic files."""
    if dataset == "deepfluoro":
        from test_deepfluoro import SPACING as spacing
        from test_deepfluoro import write_deepfluoro_h5 as write

        subject, h5 = "specimen1", tmp_path / H5
    else:
        from test_ljubljana import SPACING as spacing
        from test_ljubljana import write_ljubljana_h5 as write

        subject, h5 = "subject01-lat", tmp_path / "ljubljana.h5"
    write(h5)
    spec = {"spacing_mm": spacing, "height": 24, "border_px": 1}
    settings = json.dumps({"seed": 0, "threads": 1, "datasets": {dataset: spec}})
    prepared, xrays = tmp_path / "prepared", tmp_path / "xrays"
    args = ["--dataset", dataset, "--subject", subject, "--settings", settings]
    args += ["--source", str(h5), "--prepared", str(prepared), "--xrays", str(xrays)]
    assert cli.main(["parse", *args]) == 0

    subject_data = load_prepared(prepared)
    assert subject_data.geometry["height"] == 24
    assert (prepared / "mask.nii.gz").is_file()  # all background for Ljubljana (no labels)
    loaded = read_xrays(xrays, subject_data.geometry)
    assert len(loaded) >= 1 and loaded.border_px == 1
    assert loaded.images.shape[-2] == 24


def test_ctspine1k_case_is_prepared_from_ct_and_vertebra_mask(tmp_path):
    """Landmarks = centroids of complete vertebrae, whatever the orientation of the voxel axes."""
    shape = (30, 24, 60)
    affine = np.diag([-2.0, -2.0, 2.5, 1.0])  # LPS-stored axes, as many CTs are
    affine[:3, 3] = [40.0, 30.0, -50.0]
    ct = np.full(shape, -1000.0, np.float32)
    mask = np.zeros(shape, np.int16)
    for k, label in enumerate(range(20, 25)):  # L1..L5, one box each along the last axis
        z = slice(5 + 10 * k, 12 + 10 * k)
        mask[10:20, 8:16, z] = label
        ct[10:20, 8:16, z] = 700.0
    mask[0:3, 0:3, 0:3] = 3  # C3 touches the border: cut by the field of view, not a landmark
    root = tmp_path / "ctspine1k"
    files = datasets.get("ctspine1k").raw_files("liver_3", {})
    save_volume(ct, affine, root / files[0])
    save_volume(mask, affine, root / files[1])

    prepared = prepare_case(root, "liver_3", 2.5, 10)
    assert prepared.landmarks["name"].tolist() == ["L1", "L2", "L3", "L4", "L5"]
    ijk = np.stack([[14.5, 11.5, 8.0 + 10 * k] for k in range(5)])
    expected = ijk @ affine[:3, :3].T + affine[:3, 3] - prepared.shift_mm
    assert np.allclose(prepared.landmarks[["x", "y", "z"]].to_numpy(), expected, atol=1e-6)
    assert (np.diag(prepared.affine)[:3] > 0).all()  # voxel axes now run along R, A, S


def test_ctspine1k_file_put_by_hand_is_accepted(tmp_path):
    root = tmp_path / "ctspine1k"
    (root / "volumes").mkdir(parents=True)
    (root / "volumes" / "liver_3.nii.gz").write_bytes(b"a CT")
    digest = hashlib.sha256(b"a CT").hexdigest()
    path = datasets.get("ctspine1k").download("volumes/liver_3.nii.gz", root, sha256=digest)
    assert Path(f"{path}.sha256").read_text().split()[0] == digest


def test_generalization_table_rows(tmp_path):
    """Table 2 from held-out runs; implemented methods without agnostic models say so."""
    from regbench.tables import RUN_COLUMNS

    run = tmp_path / "_agnostic" / "embedded-cohort" / "c04" / "runs" / "posenet.csv"
    run.parent.mkdir(parents=True)
    rows = pd.DataFrame(0.0, index=range(3), columns=list(RUN_COLUMNS))
    rows = rows.assign(xray_id=["0", "1", "2"], method="posenet", status="ok")
    rows["mtre_mm"] = [0.5, 2.0, 20.0]
    rows.to_csv(run, index=False)
    settings = {
        "seed": 0,
        "threads": 1,
        "evaluation": {"success_mm": 1.0, "sr_mm": 10.0, "n_bootstrap": 20},
        "methods": ["posenet", "ours-so4", "sopi"],
        "pending": ["ours-so4"],
    }
    out = tmp_path / "tables"
    args = ["--runs", str(run), "--settings", json.dumps(settings), "--out-dir", str(out)]
    assert cli.main(["generalization-table", *args]) == 0
    table = pd.read_csv(out / "table2.csv").set_index("Method")
    assert table.loc["posenet", "Dataset"] == "embedded-cohort"
    assert table.loc["posenet", "Median (mm)"] == pytest.approx(2.0)
    assert table.loc["ours-so4", "Note"] == "no patient-agnostic model yet"
    assert table.loc["sopi", "Note"] == "not implemented"
    assert (out / "table2.md").stat().st_size and (out / "table2.tex").stat().st_size
    assert not (out / "table3.csv").exists()  # no ablations listed


def test_agnostic_ablations_make_table3(tmp_path):
    """When the agnostic scenario lists ablations (the paper's Table 3 is its generalization
    setting), Table 3 comes from those runs; the ablation rows stay out of Table 2."""
    from regbench.tables import RUN_COLUMNS

    runs = []
    for method, errors in [("ours-so4", [0.2, 0.4]), ("abl-euclidean", [0.5, 3.5])]:
        run = tmp_path / "c04" / "runs" / f"{method}.csv"
        run.parent.mkdir(parents=True, exist_ok=True)
        rows = pd.DataFrame(0.0, index=range(2), columns=list(RUN_COLUMNS))
        rows = rows.assign(xray_id=["0", "1"], method=method, status="ok", mtre_mm=errors)
        rows.to_csv(run, index=False)
        runs.append(str(run))
    settings = {
        "seed": 0,
        "threads": 1,
        "evaluation": {"success_mm": 1.0, "sr_mm": 10.0, "n_bootstrap": 20},
        "methods": ["ours-so4"],
        "ablations": ["ours-so4", "abl-euclidean", "abl-cnn3d"],
    }
    out = tmp_path / "tables"
    args = ["--runs", *runs, "--settings", json.dumps(settings), "--out-dir", str(out)]
    assert cli.main(["generalization-table", *args]) == 0
    assert pd.read_csv(out / "table2.csv")["Method"].tolist() == ["ours-so4"]
    table3 = pd.read_csv(out / "table3.csv").set_index("Method")
    assert table3.index.tolist() == ["ours-so4", "abl-euclidean", "abl-cnn3d"]
    assert table3.loc["abl-euclidean", "SMSR (%)"] == pytest.approx(50.0)
    assert table3.loc["abl-euclidean", "Mean (mm)"] == pytest.approx(2.0)
    assert table3.loc["abl-cnn3d", "Note"] == "not implemented"  # listed, no runs
