"""Annealed Langevin dynamics (ALD) and consistent annealed sampling (CAS), Sigma-preconditioned
(diffusion-math.md section 2 and 4.2, erratum E11).

Both are written in the VE variable y = x / alpha(t) with noise level sigma~ = sigma(t) / alpha(t),
in which every process is y_t = x_0 + sigma~ sqrt(Sigma) eps (alpha = 1 for VE, so there y = x and
sigma~ = sigma: exactly the thesis's SMLD samplers). The preconditioned score in y is
Sigma grad_y log p = -sqrt(Sigma) eps_hat / sigma~.

ALD (2.5.10 with E11): for each level i (largest first), M = ``n_steps_each`` times
    y <- y + a_i Sigma s + sqrt(2 a_i) sqrt(Sigma) z,   a_i = step_lr * sigma~_i^2 / sigma~_min^2.
The printed NI form (6.3.13) has no Sigma on the score term and the wrong stationary law (E11).

CAS (2.5.11 with E11): one step per level,
    y_{i-1} = y_i + eta sigma~_i^2 Sigma s + beta_i sigma~_{i-1} sqrt(Sigma) z,
    eta = step_lr / sigma~_min^2,  beta_i = sqrt(1 - gamma_i^2 (1 - eta)^2),  gamma_i = sigma~_i / sigma~_{i-1},
which keeps the noise level consistent: (1 - eta)^2 sigma~_i^2 + beta_i^2 sigma~_{i-1}^2 = sigma~_{i-1}^2.

Defaults (docs/diffusion.md, "ALD and CAS defaults"; checked against the exact variance recursion for
Gaussian data in tests/test_diffusion_langevin.py):

- CAS: eta = max_i (1 - 1 / gamma_i), the smallest value that keeps every beta_i real. CAS contracts the
  data part of y by (1 - eta) per level, so it leaves a variance deficit of about eta / 2; this eta tends to
  0 as the grid refines (about log(sigma~_max / sigma~_min) / L), so the deficit vanishes with more levels.
  A fixed eta (the former max(0.062, ...)) leaves a deficit that does not.
- ALD: the Langevin time spent at level i, in units of that level's noise variance, is
  tau = M a_i / sigma~_i^2 = M step_lr / sigma~_min^2. Keep it constant: step_lr = min(1, TAU / M) sigma~_min^2
  with TAU = 2 (eta = step_lr / sigma~_min^2 capped at 1, where one step reaches the level's stationary
  scale). The remaining error is the lag of a chain that stops mixing once sigma~_i falls below the data
  scale: about log(gamma) / tau relative variance, which falls as 1 / L when the levels refine. Scaling
  step_lr as 1 / L instead (a constant total time) would leave that error constant.
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field

from bench.types import Spacing, Steps

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler

TAU = 2.0  # ALD's default Langevin time per level, in units of the level's noise variance


def ald_default_eta(n_steps_each: int) -> float:
    """ALD's default step_lr / sigma~_min^2: min(1, TAU / M), a constant time TAU per level (module docstring)."""
    return min(1.0, TAU / n_steps_each)


def cas_default_eta(sig: list[float]) -> float:
    """CAS's default eta = max_i (1 - sigma~_{i+1} / sigma~_i) = max_i (1 - 1 / gamma_i): the smallest admissible."""
    return max(1.0 - lo / hi for hi, lo in zip(sig[:-1], sig[1:])) if len(sig) > 1 else 0.0


def langevin_step(family: Any, y: torch.Tensor, t: float, alpha: float, sig: float, step: float, rng: Any) -> torch.Tensor:
    """One preconditioned Langevin step in the VE variable y = x / alpha at noise level sig = sigma / alpha:
    y + step Sigma grad_y log p + sqrt(2 step) sqrt(Sigma) z, with Sigma grad_y log p = -sqrt(Sigma) eps_hat / sig (E11)."""
    eps = family.eps(alpha * y, t)
    z = rng.randn(*family.shape).to(y)
    return y + family.noise.sqrt(-(step / sig) * eps + math.sqrt(2 * step) * z)


def _levels(family: Any, times: list[float]) -> tuple[list[float], list[float]]:
    a, s = family.process.alpha_sigma(torch.tensor(times, dtype=torch.float64))
    return a.tolist(), (s / a).tolist()


class ALD(DiffusionSampler):
    """Annealed Langevin dynamics; ``steps`` = number of noise levels, NFE = steps * n_steps_each
    (+1 with the final denoising step). ``step_lr`` = epsilon of section 2 (None:
    min(1, 2 / n_steps_each) sigma~_min^2, a constant Langevin time per level; see the module docstring)."""

    uses_sampling_times = True

    name = "ald"

    def __init__(self, steps: Steps | None = None, n_steps_each: Annotated[int, Field(ge=1, le=1000)] = 5,
                 step_lr: Annotated[float, Field(gt=0)] | None = None, spacing: Spacing | None = None,
                 denoise: bool = True, clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, denoise, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.n_steps_each, self.step_lr = n_steps_each, step_lr

    def params(self):
        return {**super().params(), "n_steps_each": self.n_steps_each, "step_lr": self.step_lr}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        alphas, sig = _levels(family, times)
        lr = self.step_lr if self.step_lr is not None else ald_default_eta(self.n_steps_each) * sig[-1] ** 2
        self.record(family, times, step_lr=lr, n_steps_each=self.n_steps_each)
        y = sig[0] * family.noise.sample(rng)
        for t, a, st in zip(times, alphas, sig):
            step = lr * st ** 2 / sig[-1] ** 2
            for _ in range(self.n_steps_each):
                y = langevin_step(family, y, t, a, st, step, rng)
        if self.denoise:
            return self.final_denoise(family, alphas[-1] * y, times[-1])
        return y


class CAS(DiffusionSampler):
    """Consistent annealed sampling; ``steps`` = number of levels, one network call each (the last
    level's call is the final denoising step; without ``denoise`` it is skipped). ``step_lr`` =
    epsilon of 2.5.11 (None: eta = max_i (1 - 1 / gamma_i), the smallest ratio that keeps every beta_i
    real on this grid; see the module docstring)."""

    uses_sampling_times = True

    name = "cas"

    def __init__(self, steps: Steps | None = None, step_lr: Annotated[float, Field(gt=0)] | None = None,
                 spacing: Spacing | None = None, denoise: bool = True, clip_x0: bool | None = None,
                 guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, denoise, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.step_lr = step_lr

    def params(self):
        return {**super().params(), "step_lr": self.step_lr}

    @staticmethod
    def betas(sig: list[float], eta: float) -> list[float]:
        out = []
        for hi, lo in zip(sig[:-1], sig[1:]):
            b2 = 1.0 - (hi / lo) ** 2 * (1.0 - eta) ** 2
            if b2 < -1e-12:
                g = hi / lo
                raise ValueError(f"cas: step_lr / sigma_min^2 = {eta:.4g} is outside ({1 - 1 / g:.4g}, {1 + 1 / g:.4g}) "
                                 f"for the level ratio gamma = {g:.4g} of this grid (beta^2 = {b2:.3g} < 0); "
                                 "use more steps or a larger step_lr")
            out.append(math.sqrt(max(b2, 0.0)))
        return out

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        alphas, sig = _levels(family, times)
        if self.step_lr is not None:
            eta = self.step_lr / sig[-1] ** 2
        else:
            eta = cas_default_eta(sig)
        betas = self.betas(sig, eta)
        self.record(family, times, eta=eta, beta=betas)
        y = sig[0] * family.noise.sample(rng)
        for i in range(len(times) - 1):
            eps = family.eps(alphas[i] * y, times[i])
            z = rng.randn(*family.shape).to(y)
            y = y + family.noise.sqrt(-eta * sig[i] * eps + betas[i] * sig[i + 1] * z)
        if self.denoise:
            return self.final_denoise(family, alphas[-1] * y, times[-1])
        return y
