"""What every registration method is: an initialiser (the regressor) and a refiner."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regbench.data.subject import Prepared
from regbench.models.regressor import PoseRegressor
from regbench.rendering.renderer import Renderer, make_renderer


@dataclass
class Context:
    """Everything a method may use for one subject (never the ground truth)."""

    renderer: Renderer
    regressor: PoseRegressor | None  # None only when every start is given
    n_points: int
    settings: dict
    border_px: int = 0  # collimator border of the X-rays, excluded from image comparisons
    similarity: torch.nn.Module | None = None  # trained learned-similarity model, if any
    similarity_setup: object | None = None  # its SimilarityGeometry for this subject
    model: torch.nn.Module | None = None  # the method's own trained model (dflnet, scr-reg)

    @classmethod
    def for_subject(
        cls,
        prepared: Prepared,
        settings: dict,
        regressor: PoseRegressor | None,
        device: torch.device,
        border_px: int = 0,
    ) -> Context:
        """A subject's context, rendered as the config's ``render`` section asks (the same
        for the workflow's registrations and for ``register-image``)."""
        render = settings["render"]
        renderer = make_renderer(prepared, render["bone_attenuation"], render["renderer"], device)
        return cls(renderer, regressor, render["n_points"], settings, int(border_px))

    def attach_similarity(
        self, path: str | Path, method: str, prepared: Prepared, device: torch.device
    ) -> None:
        """Load a learned-similarity method's trained model and what it renders with."""
        from regbench.models.similarity import SimilarityGeometry
        from regbench.train.similarity import load_similarity

        self.similarity = load_similarity(path, method, self.settings, device)
        self.similarity_setup = SimilarityGeometry(prepared, self.settings, device)

    def attach_model(self, path: str | Path, method: str, device: torch.device) -> None:
        """Load the trained model of a method that learns one of its own."""
        from regbench.methods import method_class

        self.model = method_class(method).load_model(path, self.settings, device)


class RegistrationFailed(RuntimeError):
    """A method found no pose for an X-ray (e.g. too few confident landmarks): a failed row."""


@dataclass
class Trace:
    """Poses a method went through, with the time since its start (initialisation included)."""

    start: float = field(default_factory=time.perf_counter)
    iterations: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    poses: list[torch.Tensor] = field(default_factory=list)

    def record(self, iteration: int, pose: torch.Tensor) -> None:
        self.iterations.append(iteration)
        self.seconds.append(time.perf_counter() - self.start)
        self.poses.append(pose.detach().reshape(4, 4).double().cpu())


@dataclass
class Result:
    pose: torch.Tensor  # (4,4) float64 final estimate
    iterations: int
    status: str  # "ok" or "failed"
    trace: Trace
    message: str = ""


class Method:
    """A registration method; subclasses implement :meth:`refine`."""

    name: str = ""

    def __init__(self, context: Context):
        self.context = context

    def register(self, image: torch.Tensor, init: torch.Tensor | None = None) -> Result:
        """(1,1,H,W) X-ray -> estimated pose; the clock starts before initialisation. ``init``
        (4,4) replaces the regressor's estimate (a single registration started from the view
        its DICOM header gives)."""
        trace = Trace()
        if init is None:
            init = self.initialise(image)
        else:  # the regressor's dtype and layout
            init = init.reshape(4, 4).to(torch.float32)
        trace.record(0, init)
        try:
            pose, iterations = self.refine(image, init, trace)
        except RegistrationFailed as exc:
            return Result(init, 0, "failed", trace, str(exc))
        if not torch.isfinite(pose).all():
            return Result(init, iterations, "failed", trace, "non-finite pose")
        return Result(pose, iterations, "ok", trace)

    def initialise(self, image: torch.Tensor) -> torch.Tensor:
        """(1,1,H,W) X-ray -> (4,4) initial pose: the subject's regressor (methods with an
        initialiser of their own override this)."""
        return self.context.regressor.predict(image.to(self.context.renderer.device))[0].cpu()

    def refine(
        self, image: torch.Tensor, init: torch.Tensor, trace: Trace
    ) -> tuple[torch.Tensor, int]:
        raise NotImplementedError
