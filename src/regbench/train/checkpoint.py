"""Resumable training state and checkpoint validation.

A checkpoint carries a fingerprint of the settings that produced it; loading one made under other
settings, or a corrupted file, is refused instead of half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from regbench.errors import InputError
from regbench.io import save_torch


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def own_model_settings(settings: dict, method: str) -> dict:
    """The part of the config a method's own model depends on (its checkpoint fingerprint):
    the training DRRs' rendering and the ``training`` part of the method's section (not its
    ``registration`` part, which reruns registrations only)."""
    keys = ("seed", "prior", "render", "geometry", "augment")
    return {**{k: settings[k] for k in keys}, method: {"training": settings[method]["training"]}}


def load_checkpoint(path: str | Path, settings: dict | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; refuse a foreign or broken one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupted zip, truncated pickle, ...
        raise InputError(f"checkpoint {path} is corrupted or unreadable: {exc}") from exc
    if not isinstance(blob, dict) or "fingerprint" not in blob or "state_dict" not in blob:
        raise InputError(f"checkpoint {path} is not a regbench checkpoint")
    if settings is not None and blob["fingerprint"] != fingerprint(settings):
        raise InputError(
            f"checkpoint {path} was made with other settings "
            f"(fingerprint {blob['fingerprint']} != {fingerprint(settings)})"
        )
    return blob


def load_trained(path: str | Path, expected: dict, what: str) -> dict[str, Any]:
    """A finished model's checkpoint, refused when it was trained under other settings than
    ``expected`` (the subject's seed aside: it is the run's, not the config's)."""
    blob = load_checkpoint(path)
    got = {k: v for k, v in blob["settings"].items() if k != "subject_seed"}
    if got != expected:
        raise InputError(f"{what} {path} was trained with other settings than the config's")
    return blob


def save_checkpoint(blob: dict[str, Any], settings: dict, path: str | Path) -> None:
    save_torch({**blob, "fingerprint": fingerprint(settings), "settings": settings}, path)


class TrainingState:
    """Model, optimiser, scheduler and sampling generator of a resumable training loop.

    ``resume`` restores them from the ``.partial`` file if one made under the same settings
    exists (a foreign one is discarded); ``save`` writes one; ``finish`` writes the final
    checkpoint and removes the partial one.
    """

    def __init__(self, model, optimizer, scheduler, generator: torch.Generator, settings: dict):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator, self.settings = generator, settings
        self.rows: list[dict] = []
        self.step = 0

    def resume(self, partial: Path, log) -> float:
        """Returns the training seconds already spent."""
        if not partial.exists():
            return 0.0
        try:
            state = load_checkpoint(partial, self.settings)
        except InputError as exc:
            log.warning("ignoring resumable state: %s", exc)
            partial.unlink()
            return 0.0
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.rows, self.step = state["rows"], state["step"]
        log.info("resuming training at step %d from %s", self.step, partial)
        return self.rows[-1]["seconds"] if self.rows else 0.0

    def run(
        self,
        step_loss: Callable[[], torch.Tensor | tuple[torch.Tensor, str]],
        cfg: dict,
        out: Path,
        log,
        desc: str,
        clip_norm: float | None = None,
    ) -> None:
        """Resume from ``out.with_suffix('.partial')`` and train up to step ``cfg["steps"]``:
        each step ``step_loss()`` draws its batch and returns the loss (or the loss and a detail
        for the log line), then one optimiser and scheduler step; the resumable state is saved
        every ``cfg["checkpoint_every"]`` steps."""
        total, every, partial = cfg["steps"], cfg["checkpoint_every"], out.with_suffix(".partial")
        t0 = time.perf_counter() - self.resume(partial, log)
        self.model.train()
        for _ in tqdm(range(self.step, total), desc=desc, mininterval=5):
            out = step_loss()
            loss, detail = out if isinstance(out, tuple) else (out, "")
            self.optimizer.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            if self.end_step(loss.item(), time.perf_counter() - t0, every, total, partial):
                log.info("%s step %d loss %.4f%s", desc, self.step, loss.item(), detail)

    def end_step(self, loss: float, seconds: float, every: int, total: int, partial: Path) -> bool:
        """Log one finished step; save the resumable state every ``every`` steps (not after the
        last one). Returns whether it saved."""
        self.step += 1
        self.rows.append({"step": self.step, "loss": loss, "seconds": seconds})
        if self.step % every == 0 and self.step < total:
            self.save(partial)
            return True
        return False

    def save(self, partial: Path) -> None:
        state = {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "rows": self.rows,
            "step": self.step,
        }
        save_checkpoint(state, self.settings, partial)

    def finish(self, out: Path, log_csv: Path, extra: dict) -> None:
        import pandas as pd

        from regbench.io import write_csv, write_json

        self.model.eval()
        save_checkpoint({"state_dict": self.model.state_dict(), **extra}, self.settings, out)
        write_csv(pd.DataFrame(self.rows, columns=["step", "loss", "seconds"]), log_csv)
        write_json(self.settings, out.with_suffix(".config.json"))
        partial = out.with_suffix(".partial")
        if partial.exists():
            partial.unlink()
