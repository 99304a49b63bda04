"""A stack of CNF blocks over one state shape with a Gaussian base (flows-math.md sections 1.5, 1.8).

For blocks g_1..g_n (each a CNF over [0, T]) and base N(0, sigma^2 I),

    z = g_n(... g_1(v | c) ... | c),   log p(v | c) = log N(z; 0, sigma^2 I) - sum_b d_b(T),

with d_b = -int Tr(df_b/dv) (the sign of section 1.5 / erratum 2). Each block's solve draws its own
Hutchinson probe, fixed for that solve. Generation inverts the blocks in reverse order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .base import gaussian_logprob
from .cnf_block import CNFBlock
from .nets import build_dynamics
from .odesolve import SolverConfig


class LevelFlow(nn.Module):
    def __init__(self, shape: tuple[int, ...], hidden: Sequence[int], blocks: int, cond_channels: int = 0,
                 activation: str = "softplus", zero_last: bool = True, exact_trace: bool = False,
                 time_length: float = 1.0, base_std: float = 1.0):
        super().__init__()
        self.shape = tuple(shape)
        self.exact_trace = exact_trace
        self.base_std = float(base_std)
        self.blocks = nn.ModuleList(
            CNFBlock(build_dynamics(self.shape, hidden, cond_channels, activation, zero_last), exact_trace,
                     time_length) for _ in range(blocks))

    def nets(self) -> list[nn.Module]:
        return [b.net for b in self.blocks]

    def log_prob(self, v: torch.Tensor, cond: Optional[torch.Tensor], probe_fn, cfg: SolverConfig,
                 regularize: bool):
        """(log p(v | c) per sample, kinetic (B,), jacobian (B,)) summed over blocks."""
        zero = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        delta, kin, jac = zero, zero, zero
        for block in self.blocks:
            probe = None if self.exact_trace else probe_fn(self.shape).to(v)
            v, d, k, j = block(v, probe, cond, cfg, regularize)
            delta = delta + d
            if regularize:
                kin, jac = kin + k, jac + j
        return gaussian_logprob(v, self.base_std) - delta, kin, jac

    def inverse(self, z: torch.Tensor, cond: Optional[torch.Tensor], cfg: SolverConfig) -> torch.Tensor:
        z = z.to(next(self.parameters()).dtype)
        for block in reversed(self.blocks):
            z = block.inverse(z, cond, cfg)
        return z

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
