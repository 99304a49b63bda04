"""``mrcnf``: the multi-resolution CNF of flows-math.md sections 1.7-1.11 (thesis chapter 4).

x = x_1 -> (y_1, x_2) -> ... -> (y_1, ..., y_{S-1}, x_S) with the ``haar`` or ``unimodular`` 2x2 map,

    log p(x) = sum_{s<S} [ log|det M^-1|_s + log p(y_s | x_{s+1}) ] + log p(x_S)          (4.3.10)

log p(y_s | x_{s+1}) from a conditional CNF (the coarse image concatenated at the dynamics' first
layer), log p(x_S) from an unconditional CNF after the logit pre-transform (coarsest level only,
with its log-det). Base noise per level is N(0, I), or with ``multires_noise`` N(0, sigma_s^2 I) with
the stds of section 1.11 (reference side ``normal_resolution``, default the data's side). With one
resolution this is exactly ``cnf`` (same modules, same parameter order). Generation runs coarse to
fine (eq. 4.3.16); ``generate(coarse=...)`` is super-resolution from real coarse images.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from .base import FlowFamily
from .cnf import NonNeg, Pos, solver_pair, use_exact
from .level_flow import LevelFlow
from .odesolve import SolverName
from .transforms import Logit, combine2d, decompose, multires_stds, pyramid


class MRCNF(FlowFamily):
    def __init__(self, n_resolutions: Annotated[int, Field(ge=1, le=3)] = 2,
                 transform: Literal["haar", "unimodular"] = "unimodular",
                 multires_noise: bool = False, normal_resolution: Optional[Annotated[int, Field(gt=0)]] = None,
                 hidden: tuple[Annotated[int, Field(gt=0)], ...] = (64, 64, 64),
                 blocks: Annotated[int, Field(ge=1)] = 1,
                 activation: Literal["softplus", "tanh", "elu", "swish"] = "softplus",
                 zero_last: bool = True, time_length: Pos = 1.0,
                 divergence: Literal["auto", "exact", "hutchinson"] = "auto",
                 exact_max_dim: Annotated[int, Field(ge=0)] = 10,
                 probe: Literal["gaussian", "rademacher"] = "gaussian",
                 logit: bool = True, alpha: Annotated[float, Field(ge=0, lt=0.5)] = 0.05,
                 adjoint: bool = False,
                 solver: SolverName = "bosh3", atol: Pos = 1e-3, rtol: Pos = 1e-3,
                 step_size: Optional[Pos] = None,
                 eval_solver: SolverName = "bosh3", eval_atol: Pos = 1e-5, eval_rtol: Pos = 1e-5,
                 eval_step_size: Optional[Pos] = None,
                 kinetic_weight: NonNeg = 0.01, jacobian_weight: NonNeg = 0.01, context=None):
        info = context.data
        if len(info.shape) != 3:
            raise ValueError("mrcnf models images (C, H, W)")
        train, test = solver_pair(solver, atol, rtol, step_size, adjoint, eval_solver, eval_atol, eval_rtol,
                                  eval_step_size)
        super().__init__(info.shape, info.levels, train, test, kinetic_weight, jacobian_weight, probe)
        c, h, w = self.shape
        factor = 2 ** (n_resolutions - 1)
        if h % factor or w % factor:
            raise ValueError(f"{h}x{w} images cannot be halved {n_resolutions - 1} times")
        self.n_resolutions = n_resolutions
        self.transform = transform
        self.multires_noise = multires_noise
        reference = normal_resolution or h
        stds = multires_stds(h, n_resolutions, transform, reference) if multires_noise else [1.0] * n_resolutions
        # level shapes: details of side h/2^s (3C channels) for s = 1..S-1, then the coarsest image
        shapes = [(3 * c, h // 2 ** (s + 1), w // 2 ** (s + 1)) for s in range(n_resolutions - 1)]
        shapes.append((c, h // factor, w // factor))
        self.level_shapes = shapes
        exact = [use_exact(divergence, int(torch.tensor(s).prod()), exact_max_dim) for s in shapes]
        # built coarsest first, so that with one resolution the parameters are created as in ``cnf``
        coarse = LevelFlow(shapes[-1], list(hidden), blocks, 0, activation, zero_last, exact[-1], time_length,
                           stds[-1])
        details = [LevelFlow(shapes[s], list(hidden), blocks, c, activation, zero_last, exact[s], time_length,
                             stds[s]) for s in range(n_resolutions - 2, -1, -1)]
        self.flow = coarse  # same attribute name as ``cnf``: a 1-resolution state_dict loads into cnf
        self.details = nn.ModuleList(reversed(details))  # details[s] models y_{s+1} | x_{s+2}, finest first
        self.pre = Logit(alpha) if logit else None
        self.time_length, self.num_blocks = time_length, blocks

    def nets(self):
        out = list(self.flow.nets())
        for level in self.details:
            out.extend(level.nets())
        return out

    def level_params(self) -> list[int]:
        """Parameters per level, finest detail level first, coarsest last."""
        return [lvl.num_params() for lvl in self.details] + [self.flow.num_params()]

    def log_density(self, x, rng, cfg, regularize):
        details, coarse, logdet = decompose(x, self.n_resolutions, self.transform)
        conds = pyramid(x, self.n_resolutions)[1:]  # x_{s+1} for each detail level
        probe_fn = lambda s: self.probe(rng, s)  # noqa: E731
        v, pre_ld = (self.pre.forward(coarse) if self.pre is not None else (coarse, 0.0))
        logp, kin, jac = self.flow.log_prob(v, None, probe_fn, cfg, regularize)
        logp = logp + pre_ld + logdet
        for level, y, cond in zip(self.details, details, conds):
            lp, k, j = level.log_prob(y, cond, probe_fn, cfg, regularize)
            logp, kin, jac = logp + lp, kin + k, jac + j
        return logp, kin, jac

    def generate(self, rng, temperature, cfg, coarse: Optional[torch.Tensor] = None, **_: Any) -> torch.Tensor:
        """Coarse to fine. With ``coarse`` (real images at some level's resolution, model space),
        only the finer levels are generated: super-resolution (section 1.10)."""
        if coarse is None:
            z = temperature * self.flow.base_std * rng.randn(*self.flow.shape)
            v = self.flow.inverse(z, None, cfg)
            x = self.pre.inverse(v) if self.pre is not None else v
            start = self.n_resolutions - 2
        else:
            side = coarse.shape[-1]
            sides = [s[-1] * 2 for s in self.level_shapes[:-1]]  # side of x_s for detail level s
            if side * 2 not in sides:
                raise ValueError(f"no level generates from {side}x{side} images (levels: {sides})")
            x, start = coarse, sides.index(side * 2)
        for s in range(start, -1, -1):
            level = self.details[s]
            z = temperature * level.base_std * rng.randn(*level.shape)
            y = level.inverse(z, x, cfg)
            x = combine2d(y, x, self.transform)
        return x

    def train_stats(self) -> dict[str, float]:
        out = super().train_stats()
        for s, n in enumerate(self.level_params()):
            out[f"num_params_level{s + 1}"] = float(n)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": "mrcnf", "n_resolutions": self.n_resolutions,
                "transform": self.transform, "multires_noise": self.multires_noise,
                "level_shapes": [list(s) for s in self.level_shapes],
                "base_stds": [lvl.base_std for lvl in self.details] + [self.flow.base_std],
                "logit_alpha": self.pre.alpha if self.pre is not None else None,
                "params_per_level": self.level_params()}
