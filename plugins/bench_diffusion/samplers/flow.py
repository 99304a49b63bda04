"""ODE samplers of a velocity family (flow matching; docs/diffusion.md "Flow samplers").

They integrate dx/dt = -u(x, t) (:meth:`FlowMatchingFamily.pf_drift`) from x_1 ~ N(0, Sigma)-shaped
prior at t = 1 down to the path's t_min with :func:`bench.ode.solve_ode`:

- fixed-step ``euler`` (order 1), ``heun`` (Heun's 2nd-order trapezoid, torchdiffeq ``heun2``) and
  ``midpoint`` (order 2) on ``steps`` uniform intervals: NFE = steps x order;
- adaptive ``dopri5`` / ``bosh3`` (and torchdiffeq's other adaptive methods via ``method``) with
  ``atol`` / ``rtol``: NFE is the solver's, measured by counting calls (``last_nfe``).
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from bench.ode import solve_ode

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler
from bench.types import Steps

Adaptive = Literal["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]
Tol = Annotated[float, Field(gt=0)]


class FlowODE(DiffusionSampler):
    """Base: integrate the flow ODE with ``method`` on the family's ``ode_times(steps)`` grid
    (``steps=None``: the adaptive solver's own steps between t = 1 and t_min)."""

    name = "flow_ode"
    method: ClassVar[str] = "euler"

    def __init__(self, steps: Steps = 50, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        if steps is None:
            raise ValueError(f"the fixed-step flow sampler {self.name!r} needs steps")
        super().__init__(steps, None, False, False, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.last_nfe: int | None = None

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "method": self.method}

    def solver_options(self) -> dict[str, Any]:
        return {}

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        return self.solve(family, family.process.prior_sample(rng))

    def solve(self, family: Any, x: torch.Tensor) -> torch.Tensor:
        """Integrate from ``x`` at t = 1 down to t_min; the state at t_min."""
        proc = family.process
        ts = proc.ode_times(self.steps) if self.steps is not None else [proc.t_max, proc.t_min]
        self.record(family, ts, solver=self.method)
        calls = [0]

        def func(t, y):
            calls[0] += 1
            return family.pf_drift(y, float(t))

        x = solve_ode(func, x, torch.tensor(ts, dtype=torch.float64), self.method, **self.solver_options())[-1]
        self.last_nfe = calls[0]
        return x


class Euler(FlowODE):
    """Forward Euler in generation time: x_{t-h} = x_t + h u(x_t, t); NFE = steps."""

    name, method = "euler", "euler"


class Heun(FlowODE):
    """Heun (explicit trapezoid): k1 = f(t, x), k2 = f(t + h, x + h k1), x + h (k1 + k2) / 2; NFE = 2 steps."""

    name, method = "heun", "heun2"


class Midpoint(FlowODE):
    """Explicit midpoint: x + h f(t + h/2, x + h/2 f(t, x)); NFE = 2 steps."""

    name, method = "midpoint", "midpoint"


class AdaptiveFlowODE(FlowODE):
    """An adaptive Runge-Kutta solver (``method``, default dopri5) with error control ``atol`` /
    ``rtol``; it steps exactly onto t_min. NFE measured (``last_nfe``)."""

    name = "dopri5"

    def __init__(self, method: Adaptive = "dopri5", atol: Tol = 1e-5, rtol: Tol = 1e-5, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        DiffusionSampler.__init__(self, None, None, False, False, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.last_nfe = None
        self.method, self.atol, self.rtol = method, atol, rtol
        self.name = method

    def params(self) -> dict[str, Any]:
        return {"method": self.method, "atol": self.atol, "rtol": self.rtol}

    def solver_options(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "land_on_times": True}
