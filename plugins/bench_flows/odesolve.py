"""ODE solving through torchdiffeq (flows-math.md sections 1.1-1.4).

``solve(func, y0, t, cfg)`` integrates dy/dt = func(t, y) from ``t[0]`` and returns y at every time
of the vector ``t`` (the multi-output form ODEsolver(f, xi_0, (t_0, ..., t_n)) of section 1.2), with
``torchdiffeq.odeint`` (direct backprop through the solver's operations) or
``torchdiffeq.odeint_adjoint`` (the adjoint method, eq. 2.2.9). Fixed-grid solvers (euler, midpoint,
rk4, ...) use ``step_size``; adaptive ones (dopri5, bosh3, ...) use ``atol``/``rtol`` with
torchdiffeq's step control (section 1.2). When the state is a tuple, only the first
``controlled`` states enter the error norm: the RNODE regulariser integrals are left out of step
control, as the MRCNF code does with atol = rtol = 1e20 (section 1.2, "Step control").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Literal, Optional

import torch
from torchdiffeq import odeint, odeint_adjoint

FIXED_GRID = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")
SolverName = Literal["euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams",
                     "dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]


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
        if self.method not in FIXED_GRID + ADAPTIVE:
            raise ValueError(f"unknown ODE solver '{self.method}'; choose from {FIXED_GRID + ADAPTIVE}")
        if self.method in FIXED_GRID and self.method not in ("explicit_adams", "implicit_adams") \
                and self.step_size is None:
            raise ValueError(f"fixed-grid solver '{self.method}' needs step_size")

    @property
    def fixed_grid(self) -> bool:
        return self.method in FIXED_GRID

    def steps(self, t0: float, t1: float) -> Optional[int]:
        """Number of steps of a fixed-grid solve over [t0, t1] (None for adaptive solvers)."""
        if not self.fixed_grid or self.step_size is None:
            return None
        import math

        return int(math.ceil(abs(t1 - t0) / self.step_size - 1e-9))

    def with_overrides(self, **kw: Any) -> "SolverConfig":
        kw = {k: v for k, v in kw.items() if v is not None}
        if "solver" in kw:
            kw["method"] = kw.pop("solver")
        return replace(self, **kw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _controlled_norm(controlled: int) -> Callable:
    """RMS norm over the first ``controlled`` states of a tuple, max across them."""

    def norm(states):
        return max(s.pow(2).mean().sqrt() for s in states[:controlled])

    return norm


def solve(func: Callable, y0, t: torch.Tensor, cfg: SolverConfig, *, controlled: Optional[int] = None,
          adjoint_params: Optional[tuple] = None):
    """Integrate ``func`` from ``y0`` at ``t[0]`` and return the states at every time in ``t``.

    ``func`` must be an ``nn.Module`` (or ``adjoint_params`` given) when ``cfg.adjoint``.
    ``controlled`` limits error control to the first states of a tuple state.
    """
    t = t.to(dtype=(y0[0] if isinstance(y0, tuple) else y0).dtype)
    options: dict[str, Any] = {}
    if cfg.fixed_grid:
        if cfg.step_size is not None:
            options["step_size"] = cfg.step_size
    else:
        options["max_num_steps"] = cfg.max_num_steps
        if cfg.first_step is not None:
            options["first_step"] = cfg.first_step
        if isinstance(y0, tuple) and controlled is not None and controlled < len(y0):
            options["norm"] = _controlled_norm(controlled)
    kwargs = dict(rtol=cfg.rtol, atol=cfg.atol, method=cfg.method, options=options)
    if cfg.adjoint:
        if adjoint_params is None:
            adjoint_params = tuple(p for p in func.parameters() if p.requires_grad)
        adjoint_options = {k: v for k, v in options.items() if k != "norm"}
        return odeint_adjoint(func, y0, t, adjoint_params=adjoint_params, adjoint_options=adjoint_options,
                              **kwargs)
    return odeint(func, y0, t, **kwargs)

