"""Per-subject training of the pose regressor on DRRs rendered on the fly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from regbench.errors import InputError
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.io import write_csv, write_json
from regbench.models.regressor import PoseRegressor
from regbench.render import Prepared, make_drr, render
from regbench.train.augment import augment
from regbench.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def regressor_settings(settings: dict) -> dict:
    """The part of the config a regressor depends on (its checkpoint fingerprint)."""
    keys = ("seed", "prior", "render", "regressor", "geometry")
    return {k: settings[k] for k in keys}


def train_regressor(
    prepared: Prepared,
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
) -> PoseRegressor:
    """Train and write ``out`` (checkpoint), ``log_csv`` and a config snapshot beside them.

    A resumable state is kept in ``out.with_suffix('.partial')`` every ``checkpoint_every``
    steps; a rerun after a crash continues from it and ends with the same weights.
    """
    cfg = settings["regressor"]
    fp_settings = {**regressor_settings(settings), "subject_seed": seed}
    clinical = PosePrior.from_config(settings["prior"])
    train_prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])
    drr = make_drr(
        prepared, settings["render"]["bone_attenuation"], settings["render"]["renderer"], device
    )
    n_points = settings["render"]["n_points"]

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = PoseRegressor(cfg["backbone"], clinical).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    rows: list[dict] = []
    start_step, elapsed0 = 0, 0.0

    partial = out.with_suffix(".partial")
    if partial.exists():
        try:
            state = load_checkpoint(partial, fp_settings)
        except InputError as exc:
            log.warning("ignoring resumable state: %s", exc)
            partial.unlink()
        else:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            rows, start_step = state["rows"], state["step"]
            elapsed0 = rows[-1]["seconds"] if rows else 0.0
            log.info("resuming regressor training at step %d from %s", start_step, partial)

    t0 = time.perf_counter() - elapsed0
    model.train()
    for step in tqdm(range(start_step, cfg["steps"]), desc="regressor", mininterval=5):
        rot, trans = train_prior.sample_params(cfg["batch_size"], generator)
        with torch.no_grad():
            images = augment(render(drr, carm_pose(rot, trans), n_points).cpu(), generator)
        target = model.normalise(rot, trans).to(device)
        loss = torch.nn.functional.mse_loss(model(images.to(device)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        rows.append({"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - t0})
        if (step + 1) % cfg["checkpoint_every"] == 0 and step + 1 < cfg["steps"]:
            state = {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "rows": rows,
                "step": step + 1,
            }
            save_checkpoint(state, fp_settings, partial)
            log.info("step %d loss %.4f", step + 1, loss.item())

    model.eval()
    save_checkpoint(
        {"state_dict": model.state_dict(), "backbone": cfg["backbone"], "steps": cfg["steps"]},
        fp_settings,
        out,
    )
    write_csv(pd.DataFrame(rows, columns=["step", "loss", "seconds"]), log_csv)
    write_json(fp_settings, out.with_suffix(".config.json"))
    if partial.exists():
        partial.unlink()
    return model


def load_regressor(path: str | Path, settings: dict, device: torch.device) -> PoseRegressor:
    """Load a trained regressor; its fingerprint must match the current settings."""
    blob = load_checkpoint(path)
    expected = regressor_settings(settings)
    got = {k: v for k, v in blob["settings"].items() if k != "subject_seed"}
    if got != expected:
        raise InputError(f"regressor {path} was trained with other settings than the config's")
    model = PoseRegressor(blob["backbone"], PosePrior.from_config(settings["prior"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()
