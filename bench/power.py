"""``bench power``: how many seeds (and samples) a difference needs, from a pilot run's spread.

The pilot's cells are built as ``bench compare`` builds them (bench.compare). The per-seed standard
deviation ``s_d`` of a difference between two configurations is the pooled within-cell standard
deviation over seeds times ``sqrt(2)`` (two independent conditions), or, with ``--baseline``, the
pooled standard deviation of the per-seed paired differences against the baseline row. The seed
count is ``bench.stats.seeds_for_power``. When the runs logged a per-case interval
(``<metric>_ci_lo``/``_ci_hi``, or ``<metric>_sem``), its standard deviation at the pilot's sample
count is split off ``s_d`` and scaled as ``1/sqrt(samples)`` (``bench.stats.sd_at_samples``) to show
how the sample count trades against seeds.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .compare import add_baseline, build_table, default_rows, filter_runs, load_runs, pick_metric
from .compare_table import SAMPLE_SEEDS
from .errors import UserError
from .stats import Z95, normal_seeds, sd_at_samples, seeds_for_power


def power_report(experiment, uri, metric, delta: float, where, rows, cols, average: Sequence[str] = (),
                 baseline: str | None = None, alpha: float = 0.05, power: float = 0.8) -> str:
    """Seeds needed to detect ``delta`` in ``metric`` (paired t, two-sided ``alpha``, ``power``) from
    the pilot's per-seed spread, and how the sample count trades against seeds (module docstring)."""
    if delta == 0 or delta != delta:
        raise UserError("--delta must be a non-zero number")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise UserError("--alpha and --power must lie strictly between 0 and 1")
    df, experiment, _ = load_runs(experiment, uri)
    df = filter_runs(df, where)
    metric = pick_metric(df, metric, experiment)
    rows = rows or (baseline.split("=", 1)[0] if baseline and "=" in baseline else default_rows(df, cols, average))
    table = build_table(df, rows, cols, metric, average)
    ss, dof = 0.0, 0
    if baseline:
        add_baseline(table, baseline)
        for (r, c), cell in table.cells.items():
            base = table.cells.get((table.baseline, c))
            common = sorted(set(cell.units) & set(base.units)) if base and r != table.baseline else []
            if len(common) >= 2 and common != [()]:
                d = np.array([cell.units[k] - base.units[k] for k in common])
                ss, dof = ss + float(((d - d.mean()) ** 2).sum()), dof + len(d) - 1
        what = f"pooled sd of the per-seed difference against {rows}={table.baseline}"
        factor = 1.0
    else:
        for cell in table.cells.values():
            v = np.array(list(cell.units.values()))
            if len(v) >= 2:
                ss, dof = ss + float(((v - v.mean()) ** 2).sum()), dof + len(v) - 1
        what = ("sqrt(2) x the pooled per-seed sd: two independent conditions; pairing by seed helps only "
                "where seeds correlate, see --baseline")
        factor = math.sqrt(2)
    if dof == 0:
        raise UserError("power needs a pilot with at least 2 seeds in some cell"
                        + (" matching the baseline's seeds" if baseline else ""),
                        hint="run the pilot suite with `seeds: 3` or more")
    sd = factor * math.sqrt(ss / dof)
    n = seeds_for_power(sd, delta, alpha, power)
    lines = [f"power: seeds needed to detect a difference of {delta:g} in {metric} with {power:.0%} power "
             f"(two-sided alpha {alpha:g}, paired t approximation)",
             f"pilot: experiment '{experiment}', {len(table.cells)} cell(s), {dof} degrees of freedom; "
             f"per-seed sd of a difference {sd:.4g} ({what})",
             f"seeds needed: {n} (normal approximation {normal_seeds(sd, delta, alpha, power):.1f})"]
    # a replicate that is the mean of k sample seeds of one model has 1/k of a run's sampling variance
    per_unit = [len(c.raw) / len(c.units) for c in table.cells.values() if c.raw and len(c.units) >= 2]
    k = float(np.mean(per_unit)) if per_unit else 1.0
    if any(c.unit == SAMPLE_SEEDS for c in table.cells.values()):
        lines.append("note: the pilot's replicates are sample seeds of one training seed: their spread is sampling "
                     "noise only, so these are sample seeds needed, and training noise is not counted")
    lines += _sample_tradeoff(df, metric, sd, delta, alpha, power, paired_sides=2, per_unit=k)
    return "\n".join(lines)


def _sample_tradeoff(df, metric, sd, delta, alpha, power, paired_sides: int, per_unit: float = 1.0) -> list[str]:
    """How seeds trade against samples when the per-case interval shrinks as 1/sqrt(samples);
    ``per_unit``: runs (sample seeds) averaged into one replicate."""
    lo, hi, sem = (df.get(f"metrics.{metric}_{s}") for s in ("ci_lo", "ci_hi", "sem"))
    if lo is not None and hi is not None and (lo.notna() & hi.notna()).any():
        per_case = ((hi - lo) / (2 * Z95)).dropna()
        source = f"{metric}_ci_lo/_ci_hi"
    elif sem is not None and sem.notna().any():
        per_case, source = sem.dropna(), f"{metric}_sem"
    else:
        return [f"samples: no per-case interval ({metric}_ci_lo/_ci_hi or {metric}_sem) logged, so the "
                f"sample-count trade-off is not available"]
    sd_sampling = math.sqrt(paired_sides * float(np.mean(per_case.to_numpy(dtype=float) ** 2)) / per_unit)
    n0_col = df.get("params.eval.num_samples")
    n0 = float(np.median(n0_col.dropna().astype(float))) if n0_col is not None and n0_col.notna().any() else None
    lines = [f"samples: per-case sd from {source}: {sd_sampling * math.sqrt(per_unit / paired_sides):.4g} per run, "
             + (f"{sd_sampling / math.sqrt(paired_sides):.4g} per seed (the mean of {per_unit:g} sample seeds), "
                if per_unit > 1 else "")
             + f"{sd_sampling:.4g} for a difference"
             + (f", at {n0:g} samples" if n0 else "") + "; assumed to scale as 1/sqrt(samples)"]
    if sd_sampling > sd:
        lines.append("  (the per-case sd exceeds the per-seed sd: training noise taken as 0)")
    lines.append(f"  {'samples' if n0 else 'x pilot samples':>16}  {'sd of difference':>16}  {'seeds needed':>12}")
    for f in (0.25, 0.5, 1, 2, 4, 8):
        sd_n = sd_at_samples(sd, sd_sampling, 1.0, f)
        lines.append(f"  {(f'{f * n0:g}' if n0 else f'{f:g}'):>16}  {sd_n:16.4g}  {seeds_for_power(sd_n, delta, alpha, power):12d}")
    return lines
