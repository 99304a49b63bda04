"""What the flow families share: dequantisation, the BPD loss, likelihood, sampling, NFE bookkeeping.

Training loss (flows-math.md sections 1.8-1.9, DESIGN.md section 7): a batch of model-space images
x = 2k/(L-1) - 1 is dequantised inside ``loss`` as x~ = 2 (k + u)/L - 1, u ~ U[0,1)^D, and

    loss = mean_batch bpd(x~) + lambda_K K + lambda_B B,
    bpd  = bench.likelihood.bits_per_dim(-log p(x~), D, L, ln 2)
         = (-log p(x~) - D ln 2 + D ln L) / (D ln 2),

where log p(x~) is the model-space density with every pre-transform log-det (logit, multi-resolution
map) included. For continuous points (L = None) the loss is -log p(x) / (D ln 2).

NFE of training steps: see ``nfe``.
"""
from __future__ import annotations

import abc
import math
from typing import Any, Optional

import torch
from torch import nn

from bench.likelihood import bits_per_dim, levels_from_model
from bench.protocols import LikelihoodResult

from .nfe import NFEBookkeeping
from .odesolve import SolverConfig


def gaussian_logprob(z: torch.Tensor, std: float) -> torch.Tensor:
    """log N(z; 0, std^2 I) summed per sample."""
    d = z[0].numel()
    return (-0.5 * (z / std).pow(2).flatten(1).sum(1) - 0.5 * d * math.log(2 * math.pi) - d * math.log(std))


class FlowFamily(NFEBookkeeping, abc.ABC):
    """Base class; subclasses implement ``log_density`` and ``generate`` and list their ``nets``."""

    trainable = True
    likelihood_methods = {"ode": "continuous"}

    def __init__(self, shape: tuple[int, ...], levels: Optional[int], train_solver: SolverConfig,
                 eval_solver: SolverConfig, kinetic_weight: float, jacobian_weight: float, probe: str):
        super().__init__()
        self.shape = tuple(shape)
        self.levels = levels
        self.dim = int(math.prod(self.shape))
        self.train_solver = train_solver
        self.eval_solver = eval_solver
        self.kinetic_weight = kinetic_weight
        self.jacobian_weight = jacobian_weight
        self.probe_kind = probe
        self._init_nfe(train_solver.adjoint)

    # ------------------------------------------------------------------ bookkeeping
    def nfe_modules(self) -> list[nn.Module]:
        return self.nets()

    def probe(self, rng, shape: tuple[int, ...]) -> torch.Tensor:
        """A Hutchinson probe for one solve: Gaussian or Rademacher (section 1.6)."""
        return rng.rademacher(*shape) if self.probe_kind == "rademacher" else rng.randn(*shape)

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def log_density(self, x: torch.Tensor, rng, cfg: SolverConfig, regularize: bool):
        """(log p(x) in nats per sample, kinetic (B,), jacobian (B,)) for dequantised model-space x."""

    @abc.abstractmethod
    def generate(self, rng, temperature: float, cfg: SolverConfig, **kw: Any) -> torch.Tensor:
        """Samples (B, *shape) in model space from the prior scaled by ``temperature``."""

    # ------------------------------------------------------------------ protocol
    def dequantize(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Model-space dequantised data x~ = 2 (k + u) / L - 1."""
        return 2 * (levels_from_model(x, self.levels) + u) / self.levels - 1

    def bpd_from_logp(self, logp: torch.Tensor) -> torch.Tensor:
        if self.levels is None:
            return bits_per_dim(-logp, self.dim, None)
        return bits_per_dim(-logp, self.dim, self.levels, math.log(2.0))

    def loss(self, x: torch.Tensor, rng) -> torch.Tensor:
        self._ensure_hooks()
        start = self._calls
        if self.levels is not None:
            x = self.dequantize(x, rng.rand(*x.shape[1:]))
        regularize = self.kinetic_weight > 0 or self.jacobian_weight > 0
        logp, kinetic, jac = self.log_density(x, rng, self.train_solver, regularize)
        loss = self.bpd_from_logp(logp).mean()
        if regularize:
            loss = loss + self.kinetic_weight * kinetic.mean() + self.jacobian_weight * jac.mean()
        self._record_step(start)
        return loss

    def log_likelihood(self, x: torch.Tensor, rng, method: Optional[str] = None, solver: Optional[str] = None,
                       atol: Optional[float] = None, rtol: Optional[float] = None,
                       step_size: Optional[float] = None, **_: Any) -> LikelihoodResult:
        """-log p(x) in nats per sample of already dequantised model-space x (method ``ode``)."""
        if method not in (None, "ode"):
            raise ValueError(f"unknown likelihood method '{method}' (this family has 'ode')")
        self._ensure_hooks()
        cfg = self.eval_solver.with_overrides(solver=solver, atol=atol, rtol=rtol, step_size=step_size)
        start = self._calls
        with torch.no_grad():
            logp, _, _ = self.log_density(x, rng, cfg, regularize=False)
        return LikelihoodResult(nll=-logp.detach(), kind="continuous", method="ode", nfe=float(self._calls - start))

    def bits_per_dim(self, x: torch.Tensor, rng, noisy: bool = True, **opts: Any) -> torch.Tensor:
        """Per-sample BPD of quantised model-space images: uniform (``noisy``) or mid-bin (u = 0.5)
        dequantisation (section 1.8 asks for both)."""
        if self.levels is None:
            return self.bpd_from_logp(-self.log_likelihood(x, rng, **opts).nll)
        u = rng.rand(*x.shape[1:]) if noisy else torch.full_like(x, 0.5)
        return self.bpd_from_logp(-self.log_likelihood(self.dequantize(x, u), rng, **opts).nll)

    @torch.no_grad()
    def sample(self, rng, temperature: float = 1.0, solver: Optional[str] = None, atol: Optional[float] = None,
               rtol: Optional[float] = None, step_size: Optional[float] = None, **kw: Any) -> torch.Tensor:
        self._ensure_hooks()
        cfg = self.eval_solver.with_overrides(solver=solver, atol=atol, rtol=rtol, step_size=step_size,
                                              adjoint=False)
        x = self.generate(rng, temperature, cfg, **kw)
        return x.clamp(-1, 1) if self.levels is not None else x

    # ------------------------------------------------------------------ reporting
    def train_stats(self) -> dict[str, float]:
        return self.nfe_stats()

    def describe(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "levels": self.levels, "train_solver": self.train_solver.as_dict(),
                "eval_solver": self.eval_solver.as_dict(), "kinetic_weight": self.kinetic_weight,
                "jacobian_weight": self.jacobian_weight, "probe": self.probe_kind,
                "nfe_note": "train NFE per step; backward = adjoint solve evaluations, or = forward with direct "
                            "backprop", **self.train_stats()}
