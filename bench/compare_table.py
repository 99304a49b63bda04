"""The table ``bench compare`` builds (cells with their intervals, differences against a baseline)
and its renderings: terminal, markdown, and long-form csv with the notes as ``# `` lines."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import Difference, Interval

REPLICATES = ("seed", "sample_seed")
ALPHA = 0.05  # a difference is marked when its Benjamini-Hochberg q is at most this

#: what a cell's n counts (:func:`replicate_units`)
SEEDS, NESTED, SAMPLE_SEEDS = "seeds", "seeds of sample seeds", "sample seeds"


@dataclass
class Cell:
    """One (row, column) of the table: its independent replicates (``units``), their interval, and
    the per-(seed, sample seed) values they come from (``raw``)."""

    units: dict[tuple, float]  # independent replicate -> value (see replicate_units)
    interval: Interval
    mixed: dict[str, list[str]]  # version tag -> the values found in this cell
    raw: dict[tuple, float] = field(default_factory=dict)  # (seed, sample_seed) -> value (mean over --average axes)
    unit: str = SEEDS  # what n counts: SEEDS, NESTED or SAMPLE_SEEDS


def replicate_units(raw: dict[tuple, float], names: list[str]) -> tuple[dict[tuple, float], str]:
    """The independent replicates of a cell from its values keyed by the replicate axes ``names``
    (``seed``, ``sample_seed``, those present). Several training seeds, some sampled with several
    sample seeds: the sample seeds of one model share its training noise, so each training seed is
    first the mean over its sample seeds and n counts training seeds (NESTED). One training seed
    and several sample seeds: n counts sample seeds, whose spread is sampling noise only
    (SAMPLE_SEEDS). Otherwise every (seed, sample seed) is one training seed (SEEDS)."""
    if "seed" not in names or "sample_seed" not in names:
        return raw, SEEDS
    i = names.index("seed")
    seeds: dict[tuple, list[float]] = {}
    for key, value in raw.items():
        seeds.setdefault((key[i],), []).append(value)
    if len(seeds) == len(raw):
        return raw, SEEDS
    if len(seeds) == 1:
        return raw, SAMPLE_SEEDS
    return {k: float(np.mean(v)) for k, v in seeds.items()}, NESTED


@dataclass
class Table:
    metric: str
    rows: str
    cols: str
    cells: dict[tuple[str, str], Cell]
    row_order: list[str]
    col_order: list[str]
    averaged: list[str]
    notes: list[str] = field(default_factory=list)
    replicates: list[str] = field(default_factory=list)  # the replicate axes present (``seed``, ``sample_seed``)
    baseline: str | None = None
    diffs: dict[tuple[str, str], tuple[Difference, float]] = field(default_factory=dict)



def format_cell(iv: Interval) -> str:
    if iv.kind == "t":
        return f"{iv.mean:.4g} ± {iv.half_width:.2g} (n={iv.n})"
    if iv.kind in ("bootstrap", "sem"):
        return f"{iv.mean:.4g} [{iv.lo:.4g}, {iv.hi:.4g}] (n=1, {iv.kind})"
    return f"{iv.mean:.4g} (n=1)"


def format_diff(d: Difference, q: float) -> str:
    mark = " *" if q <= ALPHA else ""
    return f"{d.mean:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}] p={d.p:.2g} q={q:.2g} {d.kind} n={d.n}{mark}"


def table_notes(table: Table, experiment: str, ignored: int) -> list[str]:
    kinds = {cell.interval.kind for cell in table.cells.values()}
    notes = [f"{table.metric} in experiment '{experiment}'; rows={table.rows}, cols={table.cols}; the latest run of "
             f"each case id" + (f" ({ignored} older run(s) of the same cases ignored)" if ignored else "")]
    reps = [a for a in table.averaged if a in REPLICATES]
    others = [a for a in table.averaged if a not in REPLICATES]
    if table.averaged:
        notes.append("averaged over: " + ", ".join(reps + [f"{a} (--average; per seed first)" for a in others]))
    else:
        notes.append("averaged over: nothing (each cell is one run)")
    units = {cell.unit for cell in table.cells.values() if cell.interval.kind == "t"}
    if units & {SEEDS, NESTED}:
        notes.append("mean ± 95% half-width (n=seeds): Student-t interval over seeds")
    if NESTED in units:
        notes.append("n counts training seeds: each is first the mean over its sample seeds (the sample seeds of "
                     "one model share its training noise)")
    if SAMPLE_SEEDS in units:
        notes.append("mean ± 95% half-width (n=sample seeds): Student-t interval over the sample seeds of one "
                     "training seed: the seeds vary only in sampling, so the interval covers sampling noise only, "
                     "not training noise")
    if "bootstrap" in kinds:
        notes.append(f"n=1 [lo, hi] bootstrap: the run's own 95% bootstrap interval "
                     f"({table.metric}_ci_lo, {table.metric}_ci_hi), not a spread over seeds")
    if "sem" in kinds:
        notes.append(f"n=1 [lo, hi] sem: the run's own value ± 1.96 x {table.metric}_sem, not a spread over seeds")
    if "single" in kinds:
        notes.append("n=1 without an interval: one seed and no per-case interval logged")
    mixed = sorted({f"{tag} ({', '.join(vals)})" for cell in table.cells.values() for tag, vals in cell.mixed.items()})
    if mixed:
        notes.append("† the cell mixes versions: " + "; ".join(mixed))
    if table.baseline is not None:
        m = len(table.diffs)
        notes.append(f"difference vs {table.rows}={table.baseline}: mean [95% interval], p, q, test, n; paired by "
                     f"seed and sample seed where two or more match (n pairs, counted as the cells' n), else Welch "
                     f"(unpaired, n of both cells); q = Benjamini-Hochberg adjusted p over {m} "
                     f"comparison(s); * = q <= {ALPHA:g} (false discovery rate {ALPHA:.0%}); intervals are not adjusted")
    return notes + table.notes


def _grid(table: Table, text_of) -> list[list[str]]:
    out = []
    for r in table.row_order:
        out.append([text_of(r, c) for c in table.col_order])
    return out


def _cell_text(table: Table, r: str, c: str) -> str:
    cell = table.cells.get((r, c))
    if cell is None:
        return "-"
    return format_cell(cell.interval) + (" †" if cell.mixed else "")


def _diff_text(table: Table, r: str, c: str) -> str:
    if r == table.baseline:
        return "baseline"
    if (r, c) in table.diffs:
        return format_diff(*table.diffs[(r, c)])
    return "-" if (r, c) not in table.cells else "n too small"


def render_text(table: Table, notes: list[str]) -> str:
    import pandas as pd

    def block(text_of) -> str:
        frame = pd.DataFrame(_grid(table, text_of), index=table.row_order, columns=table.col_order)
        frame.index.name = table.rows
        return frame.to_string()

    parts = [block(lambda r, c: _cell_text(table, r, c))]
    if table.baseline is not None:
        parts += ["", f"difference vs {table.rows}={table.baseline}:", block(lambda r, c: _diff_text(table, r, c))]
    return "\n".join(parts + [""] + [f"note: {n}" for n in notes])


def render_markdown(table: Table, notes: list[str]) -> str:
    def block(text_of, corner) -> list[str]:
        lines = [f"| {corner} | " + " | ".join(table.col_order) + " |", "|---" * (len(table.col_order) + 1) + "|"]
        for r, row in zip(table.row_order, _grid(table, text_of)):
            lines.append(f"| {r} | " + " | ".join(row) + " |")
        return lines

    lines = [f"**{table.metric}**", ""] + block(lambda r, c: _cell_text(table, r, c), table.rows)
    if table.baseline is not None:
        lines += ["", f"difference vs {table.rows}={table.baseline}:", ""]
        lines += block(lambda r, c: _diff_text(table, r, c), table.rows)
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def csv_rows(table: Table) -> list[dict[str, Any]]:
    out = []
    for r in table.row_order:
        for c in table.col_order:
            cell = table.cells.get((r, c))
            if cell is None:
                continue
            iv = cell.interval
            row = {"row": r, "col": c, "metric": table.metric, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi,
                   "n": iv.n, "interval": iv.kind, "mixed_versions": "; ".join(cell.mixed),
                   "half_width": iv.half_width, "n_counts": cell.unit}
            if table.baseline is not None:
                d, q = table.diffs.get((r, c), (None, math.nan))
                row.update({"diff": d.mean if d else math.nan, "diff_lo": d.lo if d else math.nan,
                            "diff_hi": d.hi if d else math.nan, "diff_n": d.n if d else math.nan,
                            "p": d.p if d else math.nan, "q": q,
                            "test": d.kind if d else ("baseline" if r == table.baseline else ""),
                            "significant": bool(d and q <= ALPHA)})
            out.append(row)
    return out


def render_csv(rows: list[dict[str, Any]], notes: list[str], row_key: str, col_key: str) -> str:
    """Long form: one line per cell (``row``/``col`` renamed to the keys), notes as ``# `` lines
    (read with ``pandas.read_csv(path, comment="#")``)."""
    import pandas as pd

    frame = pd.DataFrame(rows).rename(columns={"row": row_key, "col": col_key})
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue() + "".join(f"# {n}\n" for n in notes)
