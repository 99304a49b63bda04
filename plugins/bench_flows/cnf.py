"""``cnf``: an FFJORD-style continuous normalizing flow with RNODE regularisers (flows-math.md 1.5-1.9).

Density of model-space x (points, or dequantised images):

    v = logit(x) (images, optional, section 1.8) or v = x,
    log p(x) = log p(v) + log|dv/dx|,   log p(v) = log N(z; 0, I) + int_0^T Tr(df/dv) dt,

with z = v(T) from the augmented solve of ``cnf_block``. Dynamics: ``ODEMLP`` for vectors,
``ODEConvNet`` (concat-conv with a time channel) for images. Divergence exact for D <= ``exact_max_dim``
(``divergence=auto``) or Hutchinson. Training and evaluation have separate solver settings; the
training solve can use the adjoint. Sampling: z = temperature * eps, x = g^-1(z) (section 1.10).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field

from .base import FlowFamily
from .level_flow import LevelFlow
from .odesolve import SolverConfig, SolverName
from .transforms import Logit

Pos = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]


def use_exact(divergence: str, dim: int, exact_max_dim: int) -> bool:
    return divergence == "exact" or (divergence == "auto" and dim <= exact_max_dim)


def solver_pair(solver, atol, rtol, step_size, adjoint, eval_solver, eval_atol, eval_rtol, eval_step_size):
    train = SolverConfig(solver, atol, rtol, step_size, adjoint)
    test = SolverConfig(eval_solver, eval_atol, eval_rtol, eval_step_size, False)
    return train, test


class CNF(FlowFamily):
    def __init__(self, hidden: tuple[Annotated[int, Field(gt=0)], ...] = (64, 64, 64),
                 blocks: Annotated[int, Field(ge=1)] = 1,
                 activation: Literal["softplus", "tanh", "elu", "swish"] = "softplus",
                 zero_last: bool = True, time_length: Pos = 1.0,
                 divergence: Literal["auto", "exact", "hutchinson"] = "auto",
                 exact_max_dim: Annotated[int, Field(ge=0)] = 10,
                 probe: Literal["gaussian", "rademacher"] = "gaussian",
                 logit: Optional[bool] = None, alpha: Annotated[float, Field(ge=0, lt=0.5)] = 0.05,
                 adjoint: bool = False,
                 solver: SolverName = "bosh3", atol: Pos = 1e-3, rtol: Pos = 1e-3,
                 step_size: Optional[Pos] = None,
                 eval_solver: SolverName = "bosh3", eval_atol: Pos = 1e-5, eval_rtol: Pos = 1e-5,
                 eval_step_size: Optional[Pos] = None,
                 kinetic_weight: NonNeg = 0.01, jacobian_weight: NonNeg = 0.01, context=None):
        info = context.data
        train, test = solver_pair(solver, atol, rtol, step_size, adjoint, eval_solver, eval_atol, eval_rtol,
                                  eval_step_size)
        super().__init__(info.shape, info.levels, train, test, kinetic_weight, jacobian_weight, probe)
        is_image = len(self.shape) == 3
        if logit is None:
            logit = is_image and info.levels is not None
        if logit and not is_image:
            raise ValueError("the logit pre-transform needs data in [-1, 1] (images)")
        self.pre = Logit(alpha) if logit else None
        self.time_length, self.num_blocks = time_length, blocks
        self.flow = LevelFlow(self.shape, list(hidden), blocks, 0, activation, zero_last,
                              use_exact(divergence, self.dim, exact_max_dim), time_length)

    def nets(self):
        return self.flow.nets()

    def log_density(self, x, rng, cfg, regularize):
        logdet = 0.0
        if self.pre is not None:
            x, logdet = self.pre.forward(x)
        logp, kin, jac = self.flow.log_prob(x, None, lambda s: self.probe(rng, s), cfg, regularize)
        return logp + logdet, kin, jac

    def generate(self, rng, temperature, cfg, **_: Any) -> torch.Tensor:
        z = temperature * self.flow.base_std * rng.randn(*self.shape)
        v = self.flow.inverse(z, None, cfg)
        return self.pre.inverse(v) if self.pre is not None else v

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": "cnf", "exact_trace": self.flow.exact_trace,
                "logit_alpha": self.pre.alpha if self.pre is not None else None,
                "params_per_level": [self.flow.num_params()]}
