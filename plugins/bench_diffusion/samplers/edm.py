"""EDM samplers (Karras et al. 2022 Algorithm 2; docs/diffusion.md "EDM samplers") for a family
with a denoiser D(x; s) on a sigma process (capability ``edm``), Sigma-shaped noise throughout.

Noise levels: sigma_i = sigma(t_i) of the family's process at t_i = 1 - i / (N - 1), i = 0..N-1,
then sigma_N = 0; on the ``karras`` schedule this is eq. 5 of the paper,
sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho. x_0 ~ N(0, sigma_0^2 Sigma).

Each step (Algorithm 2): gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0;
s_hat = (1 + gamma_i) sigma_i; x_hat = x_i + sqrt(s_hat^2 - sigma_i^2) S_noise sqrt(Sigma) n;
d = (x_hat - D(x_hat; s_hat)) / s_hat (the PF-ODE dx/ds = -s Sigma grad log p = (x - D) / s);
Euler x_{i+1} = x_hat + (sigma_{i+1} - s_hat) d; ``edm_heun`` corrects with
d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1} to x_hat + (sigma_{i+1} - s_hat)(d + d') / 2
unless sigma_{i+1} = 0. NFE: edm_euler N, edm_heun 2N - 1.
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler
from bench.types import Steps

NonNeg = Annotated[float, Field(ge=0)]


def edm_sigmas(family: Any, steps: int) -> list[float]:
    """sigma_0 > ... > sigma_{N-1} at t_i = 1 - i / (N - 1) (see the module docstring), then 0."""
    proc = family.process
    ts = [1.0] if steps == 1 else [1.0 - i / (steps - 1) for i in range(steps)]
    return [proc.sigma(t) for t in ts] + [0.0]


class EDMEuler(DiffusionSampler):
    """Algorithm 2 without the 2nd-order correction (see the module docstring). NFE = steps."""

    name = "edm_euler"
    second_order = False

    def __init__(self, steps: Steps = 18, S_churn: NonNeg = 0.0, S_tmin: NonNeg = 0.0,
                 S_tmax: NonNeg = math.inf, S_noise: NonNeg = 1.0, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        if steps is None:
            raise ValueError(f"{self.name} needs steps")
        super().__init__(steps, None, False, False, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = S_churn, S_tmin, S_tmax, S_noise

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "S_churn": self.S_churn, "S_tmin": self.S_tmin, "S_tmax": self.S_tmax,
                "S_noise": self.S_noise}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        sigmas = edm_sigmas(family, self.steps)
        return self.solve(family, sigmas[0] * family.noise.sample(rng), sigmas, rng)

    def solve(self, family: Any, x: torch.Tensor, sigmas: list[float], rng: Any = None) -> torch.Tensor:
        """Run the steps from x at sigmas[0] down to sigmas[-1] (0); ``rng`` only with S_churn > 0."""
        if self.realised is None:
            ts = [1.0 - i / max(self.steps - 1, 1) for i in range(self.steps)]
            self.record(family, ts, sigmas=sigmas, nfe=self.nfe())
        n = len(sigmas) - 1
        for i in range(n):
            s, s_next = sigmas[i], sigmas[i + 1]
            gamma = min(self.S_churn / n, math.sqrt(2) - 1) if self.S_tmin <= s <= self.S_tmax else 0.0
            s_hat = s * (1 + gamma)
            if gamma > 0:
                x = x + math.sqrt(s_hat ** 2 - s ** 2) * self.S_noise * family.noise.sample(rng).to(x)
            d = (x - family.denoise(x, s_hat)) / s_hat
            x_next = x + (s_next - s_hat) * d
            if self.second_order and s_next > 0:
                d2 = (x_next - family.denoise(x_next, s_next)) / s_next
                x_next = x + (s_next - s_hat) * 0.5 * (d + d2)
            x = x_next
        return x

    def nfe(self) -> int:
        return self.steps


class EDMHeun(EDMEuler):
    """Algorithm 2 (Heun's 2nd-order correction except on the last step). NFE = 2 steps - 1."""

    name = "edm_heun"
    second_order = True

    def nfe(self) -> int:
        return 2 * self.steps - 1
