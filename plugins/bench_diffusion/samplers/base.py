"""What every diffusion sampler shares: parameters, the realised-sequence record, x0 clipping."""
from __future__ import annotations

from typing import Any

import torch

from ..processes import levels_info


class DiffusionSampler:
    """Base class. Subclasses set ``name``, ``requires`` and implement ``sample(family, rng)``.

    ``steps``: requested number of noise levels / integration steps (None: the family's full
    training grid, or the solver's own choice for adaptive ODE solvers). ``spacing``: how a
    discrete grid is respaced (``leading | trailing | linspace``; None: the process default,
    ``leading`` for discrete VP, ``linspace`` otherwise). ``denoise``: finish with Tweedie's
    x0_hat = (x - sigma sqrt(Sigma) eps_hat) / alpha (one more network call; E5).
    ``clip_x0``: clip x0_hat to the data's value range (None: when the data has one, e.g. images).
    """

    name = "diffusion-sampler"
    requires: frozenset = frozenset()  # stamped by Registry.create from the registration (plugin.py)
    needs_grad = False

    def __init__(self, steps: int | None = None, spacing: str | None = None, denoise: bool = True,
                 clip_x0: bool | None = None, context: Any = None):
        self.steps = steps
        self.spacing = spacing
        self.denoise = denoise
        self.clip_x0 = clip_x0
        self._log = getattr(context, "log", None)
        self.realised: dict[str, Any] | None = None

    #: True for samplers that walk ``process.sampling_times(steps, spacing)`` (see :meth:`time_grid`)
    uses_sampling_times = False

    # ------------------------------------------------------------------ helpers
    def time_grid(self, family: Any) -> list[float] | None:
        """The times this sampler visits, for ``bench run --dry-run --show-grid`` (bench.timegrid);
        None for samplers with another grid (ODE/SDE solvers, EDM, diffusers schedulers)."""
        return family.process.sampling_times(self.steps, self.spacing) if self.uses_sampling_times else None

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "spacing": self.spacing, "denoise": self.denoise, "clip_x0": self.clip_x0}

    def record(self, family: Any, times: list[float], **extra: Any) -> None:
        """Keep (once) the realised time / alpha / sigma sequence for ``describe()`` and the case log."""
        if self.realised is not None:
            return
        self.realised = {"spacing": self.spacing or family.process.default_spacing,
                         **levels_info(family.process, times), **extra}
        if self._log is not None:
            sig = self.realised["sigma"]
            scalars = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in extra.items()
                       if isinstance(v, (int, float, str))}
            self._log(f"{self.name}: {len(times)} levels, t {times[0]:.4g} -> {times[-1]:.4g}, "
                      f"sigma {sig[0]:.4g} -> {sig[-1]:.4g}" + (f", {scalars}" if scalars else ""))

    def clip(self, family: Any, x0: torch.Tensor) -> torch.Tensor:
        rng = getattr(family, "value_range", None)
        on = self.clip_x0 if self.clip_x0 is not None else rng is not None
        if on and rng is not None:
            return x0.clamp(rng[0], rng[1])
        return x0

    def final_denoise(self, family: Any, x: torch.Tensor, t: float) -> torch.Tensor:
        """Tweedie's denoising step at the last level (one network call)."""
        return self.clip(family, family.x0(x, t, family.eps(x, t)))

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.name, "requires": sorted(self.requires), **self.params(),
                "realised": self.realised if self.realised is not None else "recorded at the first sample() call"}
