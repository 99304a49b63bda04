"""``ode`` sampler for flows: z = temperature * sigma * eps, x = g^-1(z) (flows-math.md 1.10, Table 4.5).

The base noise comes from ``rng.randn`` (one generator per sample index). Solver settings default to
the family's evaluation solver. With ``super_resolution`` (``mrcnf`` only) sample i is generated
from the coarsest level of test image i (mod N): the finer CNFs are conditioned on real coarse images.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional

import torch
from pydantic import Field

from .odesolve import SolverName

Pos = Annotated[float, Field(gt=0)]


class ODESampler:
    def __init__(self, temperature: Annotated[float, Field(ge=0)] = 1.0, solver: Optional[SolverName] = None,
                 atol: Optional[Pos] = None, rtol: Optional[Pos] = None, step_size: Optional[Pos] = None,
                 super_resolution: bool = False, context=None):
        self.temperature = temperature
        self.overrides = {"solver": solver, "atol": atol, "rtol": rtol, "step_size": step_size}
        self.super_resolution = super_resolution
        self._test = context.dataset.split("test") if (super_resolution and context is not None) else None
        self.steps: Optional[int] = None
        self._solver: dict[str, Any] = {}

    def sample(self, family, rng) -> torch.Tensor:
        cfg = family.eval_solver.with_overrides(**self.overrides)
        self.steps = cfg.steps(0.0, family.time_length)  # per ODE solve (one per block and level)
        self._solver = cfg.as_dict()
        kw: dict[str, Any] = {}
        if self.super_resolution:
            if not hasattr(family, "n_resolutions") or family.n_resolutions < 2:
                raise ValueError("super_resolution needs an mrcnf family with n_resolutions >= 2")
            kw["coarse"] = self._coarse_for(rng, family)
        return family.sample(rng, temperature=self.temperature, **self.overrides, **kw)

    def _coarse_for(self, rng, family) -> torch.Tensor:
        from .transforms import pyramid

        # sample i of the case gets test image (seed-derived index) -> deterministic per sample
        idx = torch.tensor([int(s) % len(self._test) for s in rng.seeds])
        return pyramid(self._test[idx], family.n_resolutions)[-1]

    def describe(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "solver": self._solver, "steps": self.steps,
                "super_resolution": self.super_resolution}
