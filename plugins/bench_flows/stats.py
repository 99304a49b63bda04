"""``ode_stats``: what a trained ODE family reports about itself (flows-math.md section 5.1:
"parameter count", "NFE per forward and backward pass").

Returns ``num_params`` (and ``num_params_level{s}`` per resolution for ``mrcnf``), and the mean NFE per
training step of the forward solve and of the backward pass (``train_nfe_forward`` /
``train_nfe_backward``; see ``bench_flows.nfe``), read from the family's ``train_stats()``.
"""
from __future__ import annotations

from bench.context import MetricSkipped


class ODEStats:
    def compute(self, ctx) -> dict[str, float]:
        family = ctx.family
        if not hasattr(family, "train_stats"):
            raise MetricSkipped("the family keeps no ODE statistics")
        stats = dict(family.train_stats())
        stats.pop("train_steps_counted", None)
        return {k: float(v) for k, v in stats.items()}
