"""What every diffusion sampler shares: parameters, the realised-sequence record, x0 clipping, and
class conditioning with classifier-free guidance (bench_diffusion.guidance): every subclass's
``sample`` runs inside ``family.conditioned(labels, guidance, guidance_interval)`` when the family
is class-conditional, so each network call the sampler makes (eps, x0, score, velocity, denoise)
is for the requested labels and guided, whatever the sampler."""
from __future__ import annotations

import functools
from typing import Any

import torch

from ..conditioning import Guidance, GuidanceInterval  # noqa: F401 - the samplers' parameter types
from ..guidance import requested_labels
from ..processes import levels_info


def _conditioned(sample):
    """Wrap a subclass's ``sample(family, rng)`` in the family's conditioning (module docstring)."""

    @functools.wraps(sample)
    def wrapper(self, family: Any, rng: Any):
        k = getattr(family, "num_classes", None)
        if k is None or getattr(family, "condition", None) is not None:  # unconditional, or an inner call
            if k is None and self.guidance:
                raise ValueError(f"{self.name}: guidance {self.guidance} needs a class-conditional family "
                                 "(class_conditional: true on labelled data)")
            return sample(self, family, rng)
        self.num_classes = int(k)
        indices = getattr(rng, "indices", None)
        labels = requested_labels(range(rng.batch_size) if indices is None else indices, k)
        with family.conditioned(labels, self.guidance, self.guidance_interval):
            return sample(self, family, rng)

    wrapper.__bench_conditioned__ = True
    return wrapper


class DiffusionSampler:
    """Base class. Subclasses set ``name``, ``requires`` and implement ``sample(family, rng)``.

    ``steps``: requested number of noise levels / integration steps (None: the family's full
    training grid, or the solver's own choice for adaptive ODE solvers). ``spacing``: how a
    discrete grid is respaced (``leading | trailing | linspace``; None: the process default,
    ``leading`` for discrete VP, ``linspace`` otherwise). ``denoise``: finish with Tweedie's
    x0_hat = (x - sigma sqrt(Sigma) eps_hat) / alpha (one more network call; E5).
    ``clip_x0``: clip x0_hat to the data's value range (None: when the data has one, e.g. images).
    ``guidance``: classifier-free guidance scale w, ``guidance_interval``: [t_lo, t_hi] where it
    applies (class-conditional families only; bench_diffusion.guidance). NFE counts both network
    calls of a guided step.
    """

    name = "diffusion-sampler"
    requires: frozenset = frozenset()  # stamped by Registry.create from the registration (plugin.py)
    needs_grad = False

    def __init_subclass__(cls, **kw: Any):
        super().__init_subclass__(**kw)
        sample = cls.__dict__.get("sample")
        if sample is not None and not getattr(sample, "__bench_conditioned__", False):
            cls.sample = _conditioned(sample)

    def __init__(self, steps: int | None = None, spacing: str | None = None, denoise: bool = True,
                 clip_x0: bool | None = None, context: Any = None, guidance: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None):
        self.guidance = float(guidance)
        self.guidance_interval = None if guidance_interval is None else tuple(float(v) for v in guidance_interval)
        self.num_classes: int | None = None  # set at the first sample() of a class-conditional family
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

    def requested_labels(self, n: int, start: int = 0) -> torch.Tensor | None:
        """The classes samples ``start .. start + n - 1`` were generated for (i mod K), or None when
        the family was not class-conditional: what ``class_acc`` and per-class FID compare against."""
        return None if self.num_classes is None else requested_labels(range(start, start + n), self.num_classes)

    def conditioning(self) -> dict[str, Any]:
        """The guidance settings and the label rule, for ``describe()`` (empty for unconditional use)."""
        out: dict[str, Any] = {}
        if self.guidance:
            out["guidance"] = self.guidance
        if self.guidance_interval is not None:
            out["guidance_interval"] = list(self.guidance_interval)
        if self.num_classes is not None:
            out["labels"] = f"sample i gets class i mod {self.num_classes}"
        return out

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.name, "requires": sorted(self.requires), **self.params(), **self.conditioning(),
                "realised": self.realised if self.realised is not None else "recorded at the first sample() call"}
