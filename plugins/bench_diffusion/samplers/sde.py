"""Reverse-SDE and probability-flow ODE samplers (diffusion-math.md section 3; not in the thesis,
E20), Sigma-aware: for dx = f x dt + g sqrt(Sigma) dw,

    reverse SDE:  dx = [f x - g^2 Sigma s] dt + g sqrt(Sigma) dw_bar,
    PF-ODE:       dx/dt = f x - 1/2 g^2 Sigma s,            Sigma s = -sqrt(Sigma) eps_hat / sigma,

integrated from t = 1 down to the process's t_min on a uniform time grid (``steps`` intervals), then
(``denoise``) Tweedie's step at t_min. ``pc`` interleaves Langevin corrector steps (score_sde's
signal-to-noise step rule, measured in the Sigma^-1 metric) with the Euler-Maruyama predictor.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.ode import SolverName, is_fixed_grid, solve_ode
from bench.types import Steps

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler



class EulerMaruyama(DiffusionSampler):
    """Euler-Maruyama on the reverse SDE: x <- x - (f x + g^2 sqrt(Sigma) eps_hat / sigma) dt
    + sqrt(g^2 dt) sqrt(Sigma) z (no noise on the last step). NFE = steps (+1 with ``denoise``)."""

    name = "euler_maruyama"

    def __init__(self, steps: Steps = 1000, denoise: bool = True, clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, None, denoise, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)

    def params(self):
        return {"steps": self.steps, "denoise": self.denoise, "clip_x0": self.clip_x0}

    def predictor(self, family: Any, x: torch.Tensor, t: float, dt: float, rng: Any, last: bool) -> torch.Tensor:
        p = family.process
        eps = family.eps(x, t)
        drift = p.f(t) * x + (p.g2(t) / p.sigma(t)) * family.noise.sqrt(eps)  # f x - g^2 Sigma s
        x = x - drift * dt
        if not last:
            x = x + math.sqrt(p.g2(t) * dt) * family.noise.sample(rng).to(x)
        return x

    def corrector(self, family: Any, x: torch.Tensor, t: float, rng: Any) -> torch.Tensor:
        return x

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        ts = proc.ode_times(self.steps)
        self.record(family, ts)
        x = proc.prior_sample(rng)
        for i in range(self.steps):
            x = self.corrector(family, x, ts[i], rng)
            x = self.predictor(family, x, ts[i], ts[i] - ts[i + 1], rng, last=i + 1 == self.steps)
        if self.denoise:
            return self.final_denoise(family, x, ts[-1])
        return x


class PredictorCorrector(EulerMaruyama):
    """Predictor-corrector (Song et al. 2021): at each time, ``n_corrector`` Langevin steps
    x <- x + a Sigma s + sqrt(2 a) sqrt(Sigma) z, then one Euler-Maruyama step.
    NFE = steps * (1 + n_corrector) (+1 with ``denoise``).

    Step size from the signal-to-noise ratio ``snr``: score_sde's a = 2 (snr |z| / |sqrt(Sigma) s|)^2, with |sqrt(Sigma) s| = |eps_hat| / sigma (the
    score's norm in the Sigma metric). ``step_rule``: ``expected`` (default) replaces both norms by
    their expectation under the model, |z|^2 = |eps|^2 = D, giving a = 2 (snr sigma)^2 for every
    sample; ``per_sample`` uses each sample's own norms (score_sde uses batch means, which would
    make a sample depend on its batch). The per-sample ratio has a heavy tail in low dimension (a
    near-zero |eps_hat| gives a huge step), so it is only advisable for high-dimensional data.
    """

    name = "pc"

    def __init__(self, steps: Steps = 1000, n_corrector: Annotated[int, Field(ge=0, le=100)] = 1,
                 snr: Annotated[float, Field(gt=0, le=10)] = 0.16,
                 step_rule: Literal["expected", "per_sample"] = "expected", denoise: bool = True,
                 clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, denoise, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.n_corrector, self.snr, self.step_rule = n_corrector, snr, step_rule

    def params(self):
        return {**super().params(), "n_corrector": self.n_corrector, "snr": self.snr, "step_rule": self.step_rule}

    def corrector(self, family: Any, x: torch.Tensor, t: float, rng: Any) -> torch.Tensor:
        sigma = family.process.sigma(t)
        for _ in range(self.n_corrector):
            eps = family.eps(x, t)
            z = rng.randn(*family.shape).to(x)
            if self.step_rule == "expected":
                a = torch.full((len(x),), 2 * (self.snr * sigma) ** 2, dtype=x.dtype, device=x.device)
            else:
                ratio = z.flatten(1).norm(dim=1) * sigma / eps.flatten(1).norm(dim=1).clamp_min(1e-20)
                a = 2 * (self.snr * ratio) ** 2
            a = a.reshape(-1, *([1] * (x.dim() - 1)))
            x = x + family.noise.sqrt(-(a / sigma) * eps + torch.sqrt(2 * a) * z)
        return x


class PFODE(DiffusionSampler):
    """The probability-flow ODE through :func:`bench.ode.solve_ode`: a fixed-grid solver (``euler``,
    ``midpoint``, ``rk4``, ``heun2``, ...) with ``steps`` uniform steps (NFE = 1, 2, 4, 2 per step),
    or an adaptive one (``dopri5``, ``bosh3``, ...) with ``atol`` / ``rtol`` (``steps`` ignored: NFE
    is the solver's). Adaptive solvers control the
    step size on the whole batch, so samples agree across batch sizes only to the tolerance."""

    name = "pf_ode"

    def __init__(self, method: SolverName = "rk4", steps: Annotated[int, Field(ge=1, le=100000)] | None = 100,
                 atol: Annotated[float, Field(gt=0)] = 1e-5, rtol: Annotated[float, Field(gt=0)] = 1e-5,
                 denoise: bool = True, clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        adaptive = not is_fixed_grid(method)
        if not adaptive and steps is None:
            raise ValueError(f"pf_ode with the fixed-step solver {method!r} needs steps")
        super().__init__(None if adaptive else steps, None, denoise, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.method, self.atol, self.rtol = method, atol, rtol

    def params(self):
        return {"method": self.method, "steps": self.steps, "atol": self.atol, "rtol": self.rtol,
                "denoise": self.denoise, "clip_x0": self.clip_x0}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        x = proc.prior_sample(rng)
        fixed = is_fixed_grid(self.method)
        if fixed:
            ts = proc.ode_times(self.steps)
        else:
            ts = [proc.t_max, proc.t_min]
        self.record(family, ts, solver=self.method, atol=self.atol, rtol=self.rtol)
        grid = torch.tensor(ts, dtype=torch.float64)

        def func(t, y):
            return family.pf_drift(y, float(t))

        # adaptive solvers land exactly on t_min instead of stepping past it and interpolating
        # back: below t_min a VP process has sigma -> 0 and no valid score
        x = solve_ode(func, x, grid, self.method, atol=self.atol, rtol=self.rtol, land_on_times=not fixed)[-1]
        if self.denoise:
            return self.final_denoise(family, x, proc.t_min)
        return x
