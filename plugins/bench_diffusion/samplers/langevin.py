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
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field

from bench.types import Spacing, Steps

from .base import DiffusionSampler

STEP_RATIO = 0.062  # Song & Ermon's step_lr = 6.2e-6 at sigma_min = 0.01 (section 4.2.3), as a ratio


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
    (+1 with the final denoising step). ``step_lr`` = epsilon of section 2 (None: 0.062 sigma~_min^2,
    i.e. 6.2e-6 at sigma_min = 0.01)."""

    name = "ald"

    def __init__(self, steps: Steps | None = None, n_steps_each: Annotated[int, Field(ge=1, le=1000)] = 5,
                 step_lr: Annotated[float, Field(gt=0)] | None = None, spacing: Spacing | None = None,
                 denoise: bool = True, clip_x0: bool | None = None, context: Any = None):
        super().__init__(steps, spacing, denoise, clip_x0, context)
        self.n_steps_each, self.step_lr = n_steps_each, step_lr

    def params(self):
        return {**super().params(), "n_steps_each": self.n_steps_each, "step_lr": self.step_lr}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        alphas, sig = _levels(family, times)
        lr = self.step_lr if self.step_lr is not None else STEP_RATIO * sig[-1] ** 2
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
    epsilon of 2.5.11 (None: eta = max(0.062, max_i (1 - 1 / gamma_i)), the smallest ratio that keeps
    every beta_i real on this grid)."""

    name = "cas"

    def __init__(self, steps: Steps | None = None, step_lr: Annotated[float, Field(gt=0)] | None = None,
                 spacing: Spacing | None = None, denoise: bool = True, clip_x0: bool | None = None, context: Any = None):
        super().__init__(steps, spacing, denoise, clip_x0, context)
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
            eta = max([STEP_RATIO] + [1 - lo / hi for hi, lo in zip(sig[:-1], sig[1:])])
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
