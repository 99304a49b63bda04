"""The realised sampling grids of the default DDPM process, as the table in docs/diffusion.md ("The
realised time grid"): ``python -m bench_diffusion.grid_table`` prints it, and a test checks that the
docs hold exactly this output.

For the VP process with the ``linear`` schedule and T = 1000 levels, each spacing's times are
``process.sampling_times(steps, spacing)`` and the steps in the half log-SNR
lambda = log(alpha / sigma) between consecutive times are what a solver integrates over
(Lu et al. 2022b, eq. (8)).
"""
from __future__ import annotations

import math

import numpy as np

from .noise import Isotropic
from .processes import make_process
from .schedules import Linear

SPACINGS = ("leading", "trailing", "linspace")
STEPS = (10, 20)


def lambda_steps(spacing: str, steps: int, T: int = 1000) -> tuple[list[float], list[float]]:
    """The times and the lambda steps between them on the default DDPM grid."""
    process = make_process("vp", Linear(), Isotropic((1,)), (1,), T=T)
    times = process.sampling_times(steps, spacing)
    lam = [math.log(a) - math.log(s) for a, s in (process.alpha_sigma_floats(t) for t in times)]
    return times, [b - a for a, b in zip(lam, lam[1:])]


def table() -> str:
    rows = ["| spacing | steps | t (first, last) | first step | median step | last three steps | last / previous |",
            "|---|---|---|---|---|---|---|"]
    for spacing in SPACINGS:
        for steps in STEPS:
            times, dl = lambda_steps(spacing, steps)
            rows.append(f"| `{spacing}` | {steps} | {times[0]:.3f}, {times[-1]:.3f} | {dl[0]:.3f} | "
                        f"{float(np.median(dl)):.3f} | {', '.join(f'{v:.3f}' for v in dl[-3:])} | "
                        f"{dl[-1] / dl[-2]:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
