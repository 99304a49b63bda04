"""Solver settings of the flow families over the core ODE solve (flows-math.md sections 1.1-1.4).

:class:`SolverConfig` holds how to integrate (solver name, tolerances for adaptive solvers,
``step_size`` for fixed-grid ones, adjoint or not); ``solve(func, y0, t, cfg)`` hands it to
:func:`bench.ode.solve_ode`, which owns the solver table and the torchdiffeq call (direct backprop
through the solver's operations, or the adjoint method of eq. 2.2.9). When the state is a tuple,
only the first ``controlled`` states enter the error norm: the RNODE regulariser integrals are left
out of step control, as the MRCNF code does with atol = rtol = 1e20 (section 1.2, "Step control").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Optional

import torch

from bench.ode import ADAPTIVE, FIXED_GRID, SolverName, is_fixed_grid, solve_ode

__all__ = ["ADAPTIVE", "FIXED_GRID", "SolverConfig", "SolverName", "solve"]


@dataclass(frozen=True)
class SolverConfig:
    """How to integrate: solver name, tolerances (adaptive), step size (fixed grid), adjoint or not."""

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    step_size: Optional[float] = None
    adjoint: bool = False
    max_num_steps: int = 2000
    first_step: Optional[float] = None

    def __post_init__(self) -> None:
        if is_fixed_grid(self.method) and self.method not in ("explicit_adams", "implicit_adams") \
                and self.step_size is None:
            raise ValueError(f"fixed-grid solver '{self.method}' needs step_size")

    @property
    def fixed_grid(self) -> bool:
        return is_fixed_grid(self.method)

    def steps(self, t0: float, t1: float) -> Optional[int]:
        """Number of steps of a fixed-grid solve over [t0, t1] (None for adaptive solvers)."""
        if not self.fixed_grid or self.step_size is None:
            return None
        return int(math.ceil(abs(t1 - t0) / self.step_size - 1e-9))

    def with_overrides(self, **kw: Any) -> "SolverConfig":
        kw = {k: v for k, v in kw.items() if v is not None}
        if "solver" in kw:
            kw["method"] = kw.pop("solver")
        return replace(self, **kw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def solve(func: Callable, y0, t: torch.Tensor, cfg: SolverConfig, *, controlled: Optional[int] = None,
          adjoint_params: Optional[tuple] = None):
    """Integrate ``func`` from ``y0`` at ``t[0]`` and return the states at every time in ``t``
    (``t`` cast to the state's dtype), with ``cfg``'s solver; see :func:`bench.ode.solve_ode`."""
    t = t.to(dtype=(y0[0] if isinstance(y0, tuple) else y0).dtype)
    return solve_ode(func, y0, t, cfg.method, atol=cfg.atol, rtol=cfg.rtol, step_size=cfg.step_size,
                     max_num_steps=cfg.max_num_steps, first_step=cfg.first_step, controlled=controlled,
                     adjoint=cfg.adjoint, adjoint_params=adjoint_params)
