"""Ancestral (DDPM) and DDIM sampling over a respaced grid of levels (diffusion-math.md 1.5, 1.6,
4.1; ddpm-basics.md section 5), for any process x_t = alpha x_0 + sigma sqrt(Sigma) eps.

Between consecutive levels t > s the Gaussian posterior q(x_s | x_t, x_0) (:meth:`Process.posterior`)
has mean c_xt x_t + c_x0 x_0 and covariance var * Sigma; for consecutive DDPM steps these are 2.4.21
(var = beta-tilde), and respaced steps use beta' = 1 - alpha_bar_t / alpha_bar_s. The last level
steps to the data (alpha = 1, sigma = 0), where the posterior mean is x0_hat and no noise is added.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.types import Spacing, Steps

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler



class Ancestral(DiffusionSampler):
    """x_s = c_xt x_t + c_x0 x0_hat + sqrt(v) sqrt(Sigma) z with v = beta-tilde (``variance:
    beta_tilde``, the posterior variance) or v = beta' (``variance: beta``, 2.4.29 / 6.4.19, E4);
    x0_hat = (x_t - sigma sqrt(Sigma) eps_hat) / alpha (6.2.15). NFE = steps."""

    uses_sampling_times = True

    name = "ancestral"

    def __init__(self, steps: Steps | None = None, spacing: Spacing | None = None,
                 variance: Literal["beta_tilde", "beta"] = "beta_tilde", clip_x0: bool | None = None,
                 guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, True, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.variance = variance

    def params(self):
        return {**super().params(), "variance": self.variance}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        self.record(family, times)
        x = proc.prior_sample(rng, times[0])
        for i, t in enumerate(times):
            s = times[i + 1] if i + 1 < len(times) else None
            x0 = self.clip(family, family.x0(x, t, family.eps(x, t)))
            pc = proc.posterior(t, s)
            x = pc.c_xt * x + pc.c_x0 * x0
            if s is not None:
                var = pc.var if self.variance == "beta_tilde" else pc.var_ts
                x = x + math.sqrt(var) * family.noise.sample(rng).to(x)
        return x


class DDIM(DiffusionSampler):
    """DDIM (Song et al. 2021; ddpm-basics section 5; NI form 6.2.25-29):
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) sqrt(Sigma) eps_hat + c sqrt(Sigma) z,
    c^2 = eta^2 * (posterior variance) (eta = 0: deterministic, 2.4.31-32; eta = 1: ancestral's
    variance). With clipping, eps_hat is recomputed from the clipped x0_hat. NFE = steps."""

    uses_sampling_times = True

    name = "ddim"

    def __init__(self, steps: Steps | None = None, spacing: Spacing | None = None,
                 eta: Annotated[float, Field(ge=0, le=1)] = 0.0,
                 clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, True, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.eta = eta

    def params(self):
        return {**super().params(), "eta": self.eta}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        self.record(family, times)
        x = proc.prior_sample(rng, times[0])
        for i, t in enumerate(times):
            eps = family.eps(x, t)
            x0 = family.x0(x, t, eps)
            clipped = self.clip(family, x0)
            if clipped is not x0:
                x0, eps = clipped, family.eps_from_x0(x, t, clipped)
            if i + 1 == len(times):
                return x0
            pc = proc.posterior(t, times[i + 1])
            c2 = self.eta ** 2 * pc.var
            direction = math.sqrt(max(pc.sigma_s ** 2 - c2, 0.0)) * eps
            if c2 > 0:
                direction = direction + math.sqrt(c2) * rng.randn(*family.shape).to(x)
            x = pc.alpha_s * x0 + family.noise.sqrt(direction)
        return x
