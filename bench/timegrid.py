"""The realised time grid of each case's sampler, for ``bench run --dry-run --show-grid``.

A sampler that walks a fixed grid says so with ``time_grid(family)``: the times it visits (in
bench_diffusion, ``process.sampling_times(steps, spacing)`` for DDPM, DDIM, Langevin and the multistep
solvers; docs/diffusion.md, "The realised time grid"); None or no such method means no fixed grid.
Shown per case: those times and, where the family's ``process`` gives ``alpha_sigma_floats(t)``, the
steps in the half log-SNR lambda = log(alpha / sigma) between them, where a solver's error lives.
The ratio of the last lambda step to the one before is what ``lower_order_final`` guards against
(about 5 on the ``leading`` grid of a 1000-level DDPM at 10 steps).
"""
from __future__ import annotations

import math
import tempfile
from typing import Any, Callable

from .registry import label


def realised_grid(family: Any, sampler: Any) -> dict[str, Any] | None:
    """``{"t", "lambda", "dlambda"}`` (plus ``spacing`` if the sampler has one) of the grid
    ``sampler`` walks on ``family``; None when it declares none. ``lambda`` is empty when the family
    has no ``process.alpha_sigma_floats``."""
    grid = getattr(sampler, "time_grid", None)
    times = grid(family) if callable(grid) else None
    if times is None:
        return None
    times = [float(t) for t in times]
    process = getattr(family, "process", None)
    lam: list[float] = []
    if hasattr(process, "alpha_sigma_floats"):
        for t in times:
            a, s = process.alpha_sigma_floats(t)
            lam.append(math.log(a) - math.log(s) if a > 0 and s > 0 else math.inf)
    spacing = getattr(sampler, "spacing", None) or getattr(process, "default_spacing", None)
    return {"spacing": spacing, "t": times, "lambda": lam, "dlambda": [b - a for a, b in zip(lam, lam[1:])]}


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.4g}" for v in values)


def grid_lines(cases: list[Any], registries: Any) -> list[str]:
    """Lines describing each case's realised grid (components built once per distinct spec; the
    store is a throw-away directory: nothing is trained or written)."""
    from .context import BuildContext
    from .store import Store

    out: list[str] = []
    built: dict[tuple, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        store = Store(tmp)

        def get(key: tuple, make: Callable[[], Any]) -> Any:
            if key not in built:
                built[key] = make()
            return built[key]

        for case in cases:
            out.append(f"  {case.id}")
            if case.sampler is None:
                out.append("      no sampler")
                continue
            d_key = ("dataset", label(case.dataset), case.seed)
            dataset = get(d_key, lambda: registries.dataset.create(
                case.dataset, context=BuildContext.from_registries(registries, seed=case.seed, store=store)))
            ctx = BuildContext.from_registries(registries, seed=case.seed, store=store, dataset=dataset)
            family = get(d_key + (label(case.family),), lambda: registries.family.create(case.family, context=ctx))
            sampler = get(d_key + (label(case.family), label(case.sampler)),
                          lambda: registries.sampler.create(case.sampler, context=ctx))
            grid = realised_grid(family, sampler)
            if grid is None:
                out.append("      no fixed time grid (the sampler chooses its own times)")
                continue
            dl = grid["dlambda"]
            spacing = f"{grid['spacing']}, " if grid["spacing"] else ""
            out.append(f"      {spacing}{len(grid['t'])} times: t = {_fmt(grid['t'])}")
            if dl:
                ratio = f"; last/previous = {dl[-1] / dl[-2]:.2f}" if len(dl) > 1 and dl[-2] else ""
                out.append(f"      lambda steps: {_fmt(dl)}{ratio}")
    return out
