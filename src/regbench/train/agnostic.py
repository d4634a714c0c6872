"""Patient-agnostic training of the pose regressor: one model for several training subjects.

The loop is :func:`regbench.train.regressor.train_regressor`'s, except that every step renders its
batch from one training subject drawn uniformly (with the run's generator, so a rerun draws the
same sequence). Subjects are loaded on demand and the DRRs of the most recent ``cache_size`` are
kept, so training sets larger than memory work. The checkpoint has the same fingerprint keys as a
per-subject regressor, so ``register`` loads it with :func:`~regbench.train.regressor.load_regressor`;
the training subjects are recorded in the config snapshot beside it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from regbench.errors import InputError
from regbench.geometry.poses import carm_pose
from regbench.geometry.priors import PosePrior
from regbench.io import write_json
from regbench.models.regressor import PoseRegressor
from regbench.render import load_prepared, make_drr, read_geometry, render
from regbench.train.augment import augment
from regbench.train.checkpoint import TrainingState
from regbench.train.regressor import regressor_settings

log = logging.getLogger(__name__)


class SubjectDRRs:
    """DRR modules of prepared subject folders, built on first use, at most ``size`` kept."""

    def __init__(self, folders: Sequence[Path], settings: dict, device: torch.device, size: int):
        self.folders, self.settings, self.device = list(folders), settings, device
        self.size = max(1, size)
        self._cache: OrderedDict[int, torch.nn.Module] = OrderedDict()

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int):
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        render_cfg = self.settings["render"]
        drr = make_drr(
            load_prepared(self.folders[i]),
            render_cfg["bone_attenuation"],
            render_cfg["renderer"],
            self.device,
        )
        self._cache[i] = drr
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return drr


def check_same_detector(folders: Sequence[Path]) -> None:
    """Training images must share one size; the detectors may differ otherwise (real data)."""
    sizes = {}
    for folder in folders:
        g = read_geometry(Path(folder) / "geometry.json")
        sizes.setdefault((int(g["height"]), int(g["width"])), []).append(str(folder))
    if len(sizes) > 1:
        raise InputError(f"training subjects have different image sizes: {sizes}")


def train_regressor_agnostic(
    prepared_dirs: Sequence[str | Path],
    settings: dict,
    seed: int,
    out: Path,
    log_csv: Path,
    device: torch.device,
    cache_size: int = 8,
) -> PoseRegressor:
    """Train one regressor on ``prepared_dirs`` and write it like a per-subject one."""
    folders = [Path(p) for p in prepared_dirs]
    if not folders:
        raise InputError("patient-agnostic training needs at least one training subject")
    check_same_detector(folders)
    cfg = settings["regressor"]
    fp_settings = {**regressor_settings(settings), "subject_seed": seed}
    clinical = PosePrior.from_config(settings["prior"])
    train_prior = PosePrior.from_config(settings["prior"], scale=cfg["prior_scale"])
    drrs = SubjectDRRs(folders, settings, device, cache_size)
    n_points = settings["render"]["n_points"]

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = PoseRegressor(cfg["backbone"], clinical).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["steps"])
    state = TrainingState(model, optimizer, scheduler, generator, fp_settings)
    partial = out.with_suffix(".partial")
    t0 = time.perf_counter() - state.resume(partial, log)
    model.train()
    for step in tqdm(range(state.step, cfg["steps"]), desc="regressor", mininterval=5):
        subject = int(torch.randint(len(drrs), (), generator=generator))
        rot, trans = train_prior.sample_params(cfg["batch_size"], generator)
        with torch.no_grad():
            clean = render(drrs[subject], carm_pose(rot, trans), n_points).cpu()
            images = augment(clean, generator)
        target = model.normalise(rot, trans).to(device)
        loss = torch.nn.functional.mse_loss(model(images.to(device)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.step = step + 1
        state.rows.append(
            {"step": step + 1, "loss": loss.item(), "seconds": time.perf_counter() - t0}
        )
        if state.step % cfg["checkpoint_every"] == 0 and state.step < cfg["steps"]:
            state.save(partial)
            log.info("step %d loss %.4f", state.step, loss.item())
    state.finish(out, log_csv, {"backbone": cfg["backbone"], "steps": cfg["steps"]})
    snapshot = {**fp_settings, "training_subjects": [str(f) for f in folders]}
    write_json(snapshot, out.with_suffix(".config.json"))
    return model
