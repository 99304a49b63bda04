"""ODE solves and divergences for every plugin (flows-math.md sections 1.2, 1.5-1.6; diffusion-math.md
section 3, the probability-flow ODE).

:func:`solve_ode` integrates dy/dt = func(t, y) with ``torchdiffeq`` and returns y at every time of
the vector ``t`` (the multi-output ODEsolver(f, y_0, (t_0, ..., t_n)) of flows-math.md 1.2). The
solver table is :data:`FIXED_GRID` (euler, midpoint, rk4, ...: one step per interval of ``t``, or
per ``step_size``) and :data:`ADAPTIVE` (dopri5, bosh3, ...: torchdiffeq's error control with
``atol``/``rtol``). ``adjoint=True`` uses ``odeint_adjoint`` (flows-math.md eq. 2.2.9).

:func:`divergence` is div f = Tr(df/dy) per sample for a batch whose rows are independent:

- exact: sum_d e_d^T (df/dy) e_d, D vector-Jacobian products with the basis vectors e_d;
- Hutchinson: z^T (df/dy) z with a probe z (E[z z^T] = I: Rademacher or Gaussian), one VJP. The
  estimate is unbiased; the caller draws z ONCE per solve and passes the same z at every evaluation
  (flows-math.md 1.6), so that the integral of the estimates is itself an unbiased estimate.

Optionally also the RNODE Jacobian term ||df/dy||_F^2 / D (exact) or |z^T df/dy|^2 / D (flows-math.md
eq. 4.3.15). The divergence needs autograd even under ``torch.no_grad``: call it inside
``torch.enable_grad()`` with ``y.requires_grad``.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch

FIXED_GRID = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8")
SolverName = Literal["euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams",
                     "dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]


def is_fixed_grid(method: str) -> bool:
    """True for the fixed-grid solvers, False for the adaptive ones; ValueError for anything else."""
    if method not in FIXED_GRID + ADAPTIVE:
        raise ValueError(f"unknown ODE solver '{method}'; choose from {', '.join(FIXED_GRID + ADAPTIVE)}")
    return method in FIXED_GRID


def _controlled_norm(controlled: int) -> Callable:
    """RMS norm over the first ``controlled`` states of a tuple, max across them."""

    def norm(states):
        return max(s.pow(2).mean().sqrt() for s in states[:controlled])

    return norm


def solve_ode(func: Callable, y0: Any, t: torch.Tensor, method: str = "dopri5", *, atol: float = 1e-5,
              rtol: float = 1e-5, step_size: Optional[float] = None, land_on_times: bool = False,
              max_num_steps: Optional[int] = None, first_step: Optional[float] = None,
              controlled: Optional[int] = None, adjoint: bool = False,
              adjoint_params: Optional[tuple] = None) -> Any:
    """Integrate ``func(t, y)`` from ``y0`` at ``t[0]``; the states at every time of ``t`` (stacked).

    Fixed-grid methods step over the intervals of ``t`` (or by ``step_size``); ``atol``/``rtol``
    apply to adaptive methods only. Adaptive options: ``land_on_times`` makes the solver step
    exactly onto each time of ``t`` instead of stepping past and interpolating back (needed when
    ``func`` is undefined beyond the last time, e.g. a VP score below t_min); ``max_num_steps``,
    ``first_step``; ``controlled`` limits error control to the first states of a tuple state (the
    RNODE integrals are left out, flows-math.md 1.2 "Step control"). ``adjoint`` needs ``func`` to be
    an ``nn.Module`` or ``adjoint_params``. ``t`` is used as given (its dtype is the caller's).
    """
    from torchdiffeq import odeint, odeint_adjoint

    options: dict[str, Any] = {}
    if is_fixed_grid(method):
        if step_size is not None:
            options["step_size"] = step_size
    else:
        if land_on_times:
            options["step_t"] = t[1:]
        if max_num_steps is not None:
            options["max_num_steps"] = max_num_steps
        if first_step is not None:
            options["first_step"] = first_step
        if isinstance(y0, tuple) and controlled is not None and controlled < len(y0):
            options["norm"] = _controlled_norm(controlled)
    kwargs = dict(rtol=rtol, atol=atol, method=method, options=options)
    if adjoint:
        if adjoint_params is None:
            adjoint_params = tuple(p for p in func.parameters() if p.requires_grad)
        adjoint_options = {k: v for k, v in options.items() if k != "norm"}
        return odeint_adjoint(func, y0, t, adjoint_params=adjoint_params, adjoint_options=adjoint_options,
                              **kwargs)
    return odeint(func, y0, t, **kwargs)


def divergence(f: torch.Tensor, y: torch.Tensor, probe: Optional[torch.Tensor] = None, *,
               create_graph: bool = False, frobenius: bool = False,
               batched: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(div, jac) per sample: div = Tr(df/dy) exactly (``probe=None``) or z^T (df/dy) z (``probe=z``);
    jac = ||df/dy||_F^2 / D, or |z^T df/dy|^2 / D with a probe, when ``frobenius`` (else None).

    ``f`` is a function of ``y`` whose rows depend only on the same row of ``y``. ``create_graph``
    keeps the graph through the divergence (training through it). The exact trace takes the D
    basis VJPs in one vmapped call when ``batched`` (no graph, no Frobenius term, a function that
    vmaps; otherwise, or if vmap fails, one VJP per dimension, accumulated in order d = 1..D).
    """
    if probe is not None:
        (vjp,) = torch.autograd.grad(f, y, probe, create_graph=create_graph)
        div = (vjp * probe).flatten(1).sum(1)
        return div, (vjp.pow(2).flatten(1).mean(1) if frobenius else None)
    b, d = f.shape[0], f[0].numel()
    if batched and not create_graph and not frobenius:
        basis = torch.eye(d, dtype=f.dtype, device=f.device).reshape(d, 1, *f.shape[1:]).expand(d, *f.shape)
        try:
            (jac,) = torch.autograd.grad(f, y, basis, retain_graph=True, is_grads_batched=True)  # (D, B, ...)
            return torch.diagonal(jac.reshape(d, b, d), dim1=0, dim2=2).sum(-1), None
        except RuntimeError:
            pass
    flat_f = f.flatten(1)
    div = torch.zeros(b, dtype=f.dtype, device=f.device)
    frob = torch.zeros_like(div) if frobenius else None
    for i in range(d):
        (row,) = torch.autograd.grad(flat_f[:, i].sum(), y, create_graph=create_graph, retain_graph=True)
        row = row.flatten(1)
        div = div + row[:, i]
        if frobenius:
            frob = frob + row.pow(2).sum(1)
    return div, (frob / d if frobenius else None)
