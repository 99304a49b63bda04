"""One CNF block: the augmented ODE of flows-math.md sections 1.5, 1.6 and 1.9.

State (v, d, K, B) with, for t from t0 = 0 (data) to t1 = T (noise):

    dv/dt = f(v, t | c)
    dd/dt = -Tr(df/dv)                              (d integrates -Tr: Delta log p, eq. 2.3.7)
    dK/dt = 0.5 * mean_i f_i^2                      (RNODE kinetic energy, eq. 4.3.14, code form)
    dB/dt = mean_i (eps^T df/dv)_i^2                (RNODE Jacobian Frobenius norm, eq. 4.3.15)

and, with the corrected sign of section 6 erratum 2,  log p(x) = log p(z) + int Tr = log p(z) - d(T).

Tr(df/dv) is exact (one vector-Jacobian product per dimension, for small D) or Hutchinson's
eps^T (df/dv) eps with eps drawn ONCE per solve and held fixed across evaluations (section 1.6),
both by :func:`bench.ode.divergence`.
With the exact trace, B uses the exact ||df/dv||_F^2 / D. Sampling integrates dv/dt alone from T
back to 0. The divergence needs autograd even under ``torch.no_grad``; the graph through it is kept
only when gradients are being taken (direct backprop, or the adjoint's backward solve).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bench.ode import divergence

from .odesolve import SolverConfig, solve


class AugmentedDynamics(nn.Module):
    """torchdiffeq ``func(t, state)`` for (v, d[, K, B]); holds the probe and the condition of a solve."""

    def __init__(self, net: nn.Module, exact_trace: bool):
        super().__init__()
        self.net = net
        self.exact_trace = exact_trace
        self.probe: Optional[torch.Tensor] = None  # fixed for a whole solve (and its adjoint solve)
        self.cond: Optional[torch.Tensor] = None
        self.regularize = False

    def forward(self, t: torch.Tensor, state: tuple) -> tuple:
        v = state[0]
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not v.requires_grad:
                v = v.detach().requires_grad_(True)
            f = self.net(t, v, self.cond)
            # the exact trace keeps its one-VJP-per-dimension order (batched=False): bit-identical
            # results to the CNF runs made before the core divergence existed
            div, jac_sq = divergence(f, v, None if self.exact_trace else self.probe, create_graph=keep_graph,
                                     frobenius=self.regularize, batched=False)
        if not keep_graph:
            f, div = f.detach(), div.detach()
            jac_sq = jac_sq.detach() if jac_sq is not None else None
        out = (f, -div)
        if self.regularize:
            kinetic = 0.5 * f.pow(2).flatten(1).mean(1)
            out = out + (kinetic, jac_sq)
        return out


class CNFBlock(nn.Module):
    """z = v(T) from x = v(0) with log-density change, and the inverse x = v(0) from z = v(T)."""

    def __init__(self, net: nn.Module, exact_trace: bool, time_length: float = 1.0):
        super().__init__()
        self.dynamics = AugmentedDynamics(net, exact_trace)
        self.time_length = time_length

    @property
    def net(self) -> nn.Module:
        return self.dynamics.net

    def forward(self, x: torch.Tensor, probe: Optional[torch.Tensor], cond: Optional[torch.Tensor],
                cfg: SolverConfig, regularize: bool = False):
        """Returns (z, delta, kinetic, jacobian) with delta = d(T) = -int Tr (per sample)."""
        dyn = self.dynamics
        dyn.probe, dyn.cond, dyn.regularize = probe, cond, regularize
        zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        state = (x, zeros) + ((zeros.clone(), zeros.clone()) if regularize else ())
        t = torch.tensor([0.0, self.time_length], dtype=x.dtype)
        out = solve(dyn, state, t, cfg, controlled=2,
                    adjoint_params=tuple(p for p in self.net.parameters() if p.requires_grad))
        final = [s[-1] for s in out]
        if regularize:
            return final[0], final[1], final[2], final[3]
        return final[0], final[1], None, None

    def inverse(self, z: torch.Tensor, cond: Optional[torch.Tensor], cfg: SolverConfig) -> torch.Tensor:
        """Integrate dv/dt = f back from t = T to 0 (generation, eq. 4.3.16)."""
        net = self.net

        def func(t, v):
            return net(t, v, cond)

        t = torch.tensor([self.time_length, 0.0], dtype=z.dtype)
        plain = cfg.with_overrides(adjoint=False) if cfg.adjoint else cfg
        return solve(func, z, t, plain)[-1]
