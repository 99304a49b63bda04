"""The ``diffusers`` sampler: any diffusers scheduler from an allowlist drives a bench VP family.

The family's schedule becomes the scheduler's config. Its process defines T levels at t_k = (k + 1) / T,
k = 0..T-1 (the family's own T for a discrete process, T = 1000 for a continuous one), and

    alpha_bar_k = alpha(t_k)^2,   beta_k = 1 - alpha_bar_k / alpha_bar_{k-1}   (alpha_bar_{-1} = 1),

passed as ``trained_betas`` with ``num_train_timesteps = T``. ``prediction_type`` is the family's
network parameterisation (eps -> epsilon, x0 -> sample, v -> v_prediction) and the scheduler gets the
network's own output, so it converts it as diffusers would for that checkpoint (converting v to eps
first would lose float32 precision where alpha is near 0); families without one get eps_hat. diffusers' timestep k (0-based,
possibly fractional for sigma-interpolating schedulers) is bench's time t = (k + 1) / T.

Non-isotropic noise (diffusion-math.md section 6.2): in whitened coordinates w = sqrt(Sigma)^-1 x the
process is w_t = alpha w_0 + sigma eps with the same eps, so the scheduler runs on w (isotropic, as
it assumes), the model it sees is w -> eps_hat(sqrt(Sigma) w, t) (x0 outputs are whitened too; bench's
v is already whitened), and the sample is sqrt(Sigma) w.

Randomness comes from bench's per-sample streams: the initial noise is ``rng.randn`` (times the
scheduler's ``init_noise_sigma``, as bench's own samplers draw their prior); a scheduler whose
``step`` takes ``variance_noise`` (DDIM, DPMSolverMultistep) gets ``rng.randn`` at every step; one
that draws through ``generator`` (DDPM, EulerAncestral, KDPM2Ancestral, SASolver, Euler with churn,
...) gets one torch.Generator per sample, seeded from that sample's stream, which diffusers'
``randn_tensor`` uses row by row. So sample i never depends on the batch it is in.
NFE = the scheduler's network calls (len(timesteps); Heun and KDPM2 call twice per step).
"""
from __future__ import annotations

import inspect
from typing import Annotated, Any

import torch
from pydantic import Field

from bench.errors import did_you_mean

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler
from .diffusers_names import SCHEDULERS, SchedulerName, check_scheduler  # noqa: F401 - SCHEDULERS re-exported

#: config keys the family decides (see the module docstring); ``options`` may not set them
FROM_FAMILY = ("num_train_timesteps", "trained_betas", "beta_schedule", "beta_start", "beta_end",
               "prediction_type", "rescale_betas_zero_snr")
#: step() arguments the bridge passes itself
STEP_OWN = {"self", "model_output", "timestep", "sample", "generator", "variance_noise", "return_dict"}
BRIDGE_T = 1000  # levels given to the scheduler for a continuous-time family
#: bench's network parameterisation -> diffusers' prediction_type
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def schedule_table(process: Any) -> tuple[int, list[float]]:
    """(T, betas) of the process at t_k = (k + 1) / T (see the module docstring)."""
    T = int(process.T) if getattr(process, "discrete", False) else BRIDGE_T
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    ab = process.alpha_sigma(t)[0] ** 2
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return T, (1.0 - ab / prev).tolist()


def output_kind(family: Any) -> str:
    """What the scheduler is fed: the network's own parameterisation (eps, x0 or v) when the family
    exposes it (``prediction`` and ``raw``), else eps_hat."""
    kind = getattr(family, "prediction", "eps")
    return kind if kind in PREDICTION_TYPES and hasattr(family, "raw") else "eps"


def model_output(family: Any, x: torch.Tensor, t: float) -> torch.Tensor:
    """The model the scheduler sees, in whitened coordinates (one network call): eps_hat; or
    sqrt(Sigma)^-1 x0_hat; or v_hat = alpha eps_hat - sigma sqrt(Sigma)^-1 x0_hat (bench's v is
    already whitened, families.py)."""
    kind = output_kind(family)
    if kind == "eps":
        return family.eps(x, t)
    out = family.raw(x, t)
    return family.noise.inv_sqrt(out) if kind == "x0" else out


class DiffusersScheduler(DiffusionSampler):
    """A diffusers scheduler (``scheduler``, a class name from :data:`SCHEDULERS`) with ``steps``
    inference steps and ``options``: keys of its constructor (e.g. ``algorithm_type``, ``solver_order``,
    ``use_karras_sigmas``, ``timestep_spacing``) or of its ``step`` (e.g. DDIM's ``eta``, Euler's
    ``s_churn``), checked against the class's signatures. ``clip_sample`` defaults to False: bench's data
    need not lie in [-1, 1], and clipping in whitened coordinates would not clip x."""

    name = "diffusers"

    def __init__(self, scheduler: SchedulerName = "DPMSolverMultistepScheduler",
                 steps: Annotated[int, Field(ge=1, le=100000)] = 20, options: dict[str, Any] | None = None,
                 guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, None, False, False, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.scheduler_name = check_scheduler(scheduler)
        self.options = dict(options or {})
        fixed = sorted(set(self.options) & set(FROM_FAMILY))
        if fixed:
            raise ValueError(f"diffusers sampler: options {fixed} come from the family's schedule and cannot be set")
        self._cache: tuple[int, Any] | None = None
        self._cls = self.scheduler_class()  # imports diffusers now: not inside the timed sampling

    def params(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler_name, "steps": self.steps, "options": self.options}

    def scheduler_class(self) -> Any:
        from ..pretrained import import_diffusers

        return getattr(import_diffusers(f"the diffusers sampler ({self.scheduler_name})"), self.scheduler_name)

    def make_scheduler(self, family: Any) -> tuple[int, Any, dict[str, Any]]:
        """(T, a fresh scheduler whose config is the family's schedule, step options). A fresh one per
        batch: multistep schedulers keep state between steps."""
        cls = self._cls
        key = id(family.process)
        if self._cache is None or self._cache[0] != key:
            init_args = set(inspect.signature(cls.__init__).parameters) - {"self"}
            step_args = set(inspect.signature(cls.step).parameters) - STEP_OWN
            unknown = sorted(set(self.options) - init_args - step_args)
            if unknown:
                close = did_you_mean(unknown[0], init_args | step_args)
                raise ValueError(f"diffusers sampler: {self.scheduler_name} has no option '{unknown[0]}'"
                                 + (f" (did you mean '{close}'?)" if close else ""))
            T, betas = schedule_table(family.process)
            config = {"num_train_timesteps": T, "trained_betas": betas,
                      "prediction_type": PREDICTION_TYPES[output_kind(family)]}
            if "clip_sample" in init_args:
                config["clip_sample"] = False
            config.update({k: v for k, v in self.options.items() if k in init_args})
            step_kw = {k: v for k, v in self.options.items() if k not in init_args}
            self._cache = (key, (T, config, step_kw))
        T, config, step_kw = self._cache[1]
        sched = cls(**config)
        sched.set_timesteps(self.steps)
        return T, sched, step_kw

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        T, sched, step_kw = self.make_scheduler(family)
        noise = family.noise
        times = [(float(k) + 1.0) / T for k in sched.timesteps]
        if self.realised is None:  # the record's spacing is the scheduler's own
            self.spacing = getattr(sched.config, "timestep_spacing", None)
        self.record(family, times, scheduler=self.scheduler_name, timesteps=[float(k) for k in sched.timesteps])
        step_args = set(inspect.signature(sched.step).parameters)
        w = rng.randn(*family.shape) * float(sched.init_noise_sigma)
        generators = None
        if "variance_noise" not in step_args and "generator" in step_args:
            seeds = rng.randint(2 ** 31) * (2 ** 31) + rng.randint(2 ** 31)
            generators = [torch.Generator(device=w.device).manual_seed(int(s)) for s in seeds.tolist()]
        for k, t in zip(sched.timesteps, times):
            model_in = sched.scale_model_input(w, k)
            out = model_output(family, noise.sqrt(model_in), t).to(w.dtype)
            kw = dict(step_kw)
            if "variance_noise" in step_args:
                kw["variance_noise"] = rng.randn(*family.shape).to(w)
            elif generators is not None:
                kw["generator"] = generators
            w = sched.step(out, k, w, **kw).prev_sample
        return noise.sqrt(w)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scheduler_config": "the family's schedule as trained_betas "
                "(t = (k + 1) / T), prediction_type the family's, clip_sample false unless set in options"}
