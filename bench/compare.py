"""``bench compare`` and ``bench power``: read runs back from MLflow (``mlflow.search_runs`` ->
pandas), keep the latest run of each case id, and tabulate a metric with its uncertainty.

Keys for rows, columns, ``--where``, ``--group`` and ``--baseline``: ``dataset``, ``family``,
``sampler``, ``seed``, ``sample_seed`` (the case labels, also the *axes* of a suite), any dotted
param (``sampler.name``, ``sampler.steps``), a tag or a metric; ``a+b`` joins several keys.

Aggregation rules (docs/suites.md, "Comparing runs"):

- only the latest run of each case id counts (an older run of the same case, e.g. from an older
  plugin version, is ignored); a cell whose runs carry different ``bench.version`` /
  ``bench.plugin.*`` / ``bench.version.*`` tags is flagged;
- seeds (``seed``, ``sample_seed``) are the replicates: a cell is the mean over its seeds with a
  95% Student-t interval (bench.stats); any other axis that takes several values inside one cell
  must be named in ``--average`` (per seed, its values are averaged first), otherwise the table is
  refused;
- ``--baseline KEY=VALUE`` adds each row's difference against the baseline row (bench.stats:
  paired by seed, else Welch), with Benjamini-Hochberg adjusted p-values over all comparisons.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError, did_you_mean
from .stats import (Z95, Difference, Interval, benjamini_hochberg, normal_seeds, paired_difference,
                    sd_at_samples, seeds_for_power, t_interval, welch_difference)
from .tracking import _quiet_mlflow, resolve_uri, search_runs_frame

PREFERRED = ("fid", "swd", "bpd", "nll", "kid", "mmd", "psnr", "ssim", "sample_time_s", "train_time_s")
AXES = ("dataset", "family", "sampler", "seed", "sample_seed")
LABELS = AXES
REPLICATES = ("seed", "sample_seed")
VERSION_TAGS = ("tags.bench.version", "tags.bench.plugin.")
ALPHA = 0.05
TIMING = ("sample_time_s", "train_time_s")
BOOKKEEPING = {"nfe", "steps", "num_params", "num_samples", "final_loss", "peak_rss_mb", "samples_per_s", "ms_per_nfe"}
AUXILIARY = ("_ci_lo", "_ci_hi", "_sem", "_floor", "_s", "_std", "_min", "_max", "_iqr", "_nfe")


def load_runs(experiment: str | None, uri: str | None):
    """``(runs, experiment, ignored)``: the latest case run of each case id, and how many older
    runs of the same case ids were ignored."""
    _quiet_mlflow()
    from mlflow import MlflowClient

    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow database at {uri[len('sqlite:///'):]}", hint="run `bench run SUITE` first")
    client = MlflowClient(tracking_uri=uri)
    names = [e.name for e in client.search_experiments()]
    if experiment is None:
        candidates = [n for n in names if n != "Default"]
        if len(candidates) != 1:
            raise UserError("name the experiment with --experiment", hint=f"experiments: {', '.join(candidates) or 'none'}")
        experiment = candidates[0]
    if experiment not in names:
        close = did_you_mean(experiment, names)
        raise UserError(f"no experiment '{experiment}' in {uri}",
                        hint=f"did you mean '{close}'?" if close else f"experiments: {', '.join(names)}")
    df = search_runs_frame(uri, [experiment], filter_string="tags.`bench.kind` = 'case'",
                           max_results=50000, order_by=["attributes.start_time DESC"])
    if df.empty:
        raise UserError(f"experiment '{experiment}' has no case runs")
    latest = df.drop_duplicates(subset=["tags.bench.case_id"], keep="first")
    return latest, experiment, len(df) - len(latest)


def natural_key(text: Any) -> list:
    """Sort "ddim[steps=10]" before "ddim[steps=100]": digit runs compare as numbers."""
    return [(0, float(part), "") if part.replace(".", "", 1).isdigit() else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", str(text)) if part]


def resolve_key(df, key: str) -> Any:
    """A pandas Series of strings for ``key`` (see module docstring)."""
    if "+" in key:
        parts = [resolve_key(df, k) for k in key.split("+")]
        out = parts[0]
        for p in parts[1:]:
            out = out + " / " + p
        return out
    for col in ([f"tags.bench.{key}"] if key in LABELS else []) + [f"params.{key}", f"tags.{key}", f"metrics.{key}"]:
        if col in df.columns:
            return df[col].astype(str).where(df[col].notna(), "-")
    known = [a for a in LABELS if f"tags.bench.{a}" in df.columns] + \
        [c.split(".", 1)[1] for c in df.columns if c.startswith(("params.", "metrics."))]
    close = did_you_mean(key, known)
    raise UserError(f"unknown key '{key}'", hint=f"did you mean '{close}'?" if close else "try dataset, family, sampler")


def filter_runs(df, where: Sequence[str]):
    for cond in where:
        if "=" not in cond:
            raise UserError(f"--where expects key=value, got '{cond}'")
        k, v = cond.split("=", 1)
        df = df[resolve_key(df, k) == v]
    if df.empty:
        raise UserError("no runs match the --where filters")
    return df


def pick_metric(df, metric: str | None, experiment: str) -> str:
    metrics = [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and df[c].notna().any()]
    if metric is None:
        metric = next((m for m in PREFERRED if m in metrics), None)
        if metric is None:
            raise UserError("no metric to compare", hint="pass --metric")
    if metric not in metrics:
        close = did_you_mean(metric, metrics)
        raise UserError(f"no metric '{metric}' in experiment '{experiment}'",
                        hint=f"did you mean '{close}'?" if close else f"metrics: {', '.join(sorted(metrics))}")
    return metric


# ----------------------------------------------------------------------------- the table


@dataclass
class Cell:
    """One (row, column) of the table: the per-seed values and their interval."""

    units: dict[tuple, float]  # replicate (seed, sample_seed) -> value (mean over --average axes)
    interval: Interval
    mixed: dict[str, list[str]]  # version tag -> the values found in this cell


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
    baseline: str | None = None
    diffs: dict[tuple[str, str], tuple[Difference, float]] = field(default_factory=dict)


def _axes_in(df) -> list[str]:
    return [a for a in AXES if f"tags.bench.{a}" in df.columns]


def _check_average(df, average: Sequence[str]) -> None:
    axes = _axes_in(df)
    for name in average:
        if name not in axes:
            close = did_you_mean(name, axes)
            raise UserError(f"--average: '{name}' is not an axis of these runs",
                            hint=f"did you mean '{close}'?" if close else f"axes: {', '.join(axes)}")


def _averaged_axes(frame, axes: list[str]) -> dict[str, list[str]]:
    """Axis -> its values, for every axis that takes several values inside some cell."""
    out: dict[str, list[str]] = {}
    for axis in axes:
        counts = frame.groupby(["_row", "_col"])[f"tags.bench.{axis}"].nunique(dropna=False)
        if (counts > 1).any():
            out[axis] = sorted(frame[f"tags.bench.{axis}"].dropna().astype(str).unique(), key=natural_key)
    return out


def _per_case_interval(run, metric: str, value: float) -> Interval:
    lo, hi = run.get(f"metrics.{metric}_ci_lo"), run.get(f"metrics.{metric}_ci_hi")
    if lo is not None and hi is not None and lo == lo and hi == hi:
        return Interval(value, float(lo), float(hi), 1, "bootstrap")
    sem = run.get(f"metrics.{metric}_sem")
    if sem is not None and sem == sem:
        return Interval(value, value - Z95 * float(sem), value + Z95 * float(sem), 1, "sem")
    return Interval(value, math.nan, math.nan, 1, "single")


def build_table(df, rows: str, cols: str, metric: str, average: Sequence[str] = ()) -> Table:
    """Cells of ``metric`` by ``rows`` x ``cols`` under the aggregation rules (module docstring)."""
    _check_average(df, average)
    value = f"metrics.{metric}"
    frame = df.assign(_row=resolve_key(df, rows), _col=resolve_key(df, cols))
    missing = int(frame[value].isna().sum()) if value in frame.columns else len(frame)
    frame = frame[frame[value].notna()] if value in frame.columns else frame.iloc[0:0]
    if frame.empty:
        raise UserError(f"no run has a value for '{metric}'")
    axes = _axes_in(frame)
    averaged = _averaged_axes(frame, axes)
    refused = [a for a in averaged if a not in REPLICATES and a not in average]
    if refused:
        a = refused[0]
        shown = ", ".join(averaged[a][:4]) + (", ..." if len(averaged[a]) > 4 else "")
        raise UserError(f"the table would average over {a} ({len(averaged[a])} values: {shown})",
                        hint=f"put it in the rows or columns (e.g. --rows {a}+{rows}), filter with "
                             f"--where {a}=VALUE, or average it explicitly with --average {a}")
    replicates = [a for a in REPLICATES if a in axes]
    version_cols = [c for c in frame.columns if c.startswith(VERSION_TAGS)]
    cells: dict[tuple[str, str], Cell] = {}
    for (r, c), sub in frame.groupby(["_row", "_col"]):
        if replicates:
            grouped = sub.groupby([f"tags.bench.{a}" for a in replicates], dropna=False)[value].mean()
            units = {(k if isinstance(k, tuple) else (k,)): float(v) for k, v in grouped.items()}
        else:
            units = {(): float(sub[value].mean())}
        if len(units) >= 2:
            interval = t_interval(list(units.values()))
        else:
            v = next(iter(units.values()))
            interval = _per_case_interval(sub.iloc[0], metric, v) if len(sub) == 1 else Interval(v, math.nan, math.nan, 1, "single")
        mixed = {col[len("tags."):]: sorted(sub[col].fillna("-").astype(str).unique())
                 for col in version_cols if sub[col].fillna("-").nunique() > 1}
        cells[(r, c)] = Cell(units, interval, mixed)
    table = Table(metric, rows, cols, cells, sorted({k[0] for k in cells}, key=natural_key),
                  sorted({k[1] for k in cells}, key=natural_key), list(averaged))
    if missing:
        table.notes.append(f"{missing} run(s) without a value for {metric} left out (failed or not measured)")
    return table


def add_baseline(table: Table, baseline: str) -> None:
    """For each row other than the baseline row, the difference against it in every column, with
    Benjamini-Hochberg adjusted p-values over all the comparisons."""
    if "=" not in baseline:
        raise UserError(f"--baseline expects KEY=VALUE (e.g. family=ddpm), got '{baseline}'")
    key, val = baseline.split("=", 1)
    if key != table.rows:
        raise UserError(f"--baseline compares rows, so its key must be the --rows key '{table.rows}', not '{key}'",
                        hint=f"pass --rows {key}")
    if val not in table.row_order:
        close = did_you_mean(val, table.row_order)
        raise UserError(f"--baseline: no row '{val}'",
                        hint=f"did you mean '{close}'?" if close else f"rows: {', '.join(table.row_order)}")
    table.baseline = val
    found: dict[tuple[str, str], Difference] = {}
    for (r, c), cell in table.cells.items():
        base = table.cells.get((val, c))
        if r == val or base is None:
            continue
        common = sorted(set(cell.units) & set(base.units))
        if len(common) >= 2 and common != [()]:
            found[(r, c)] = paired_difference([cell.units[k] for k in common], [base.units[k] for k in common])
        elif len(cell.units) >= 2 and len(base.units) >= 2:
            found[(r, c)] = welch_difference(list(cell.units.values()), list(base.units.values()))
    q = benjamini_hochberg([d.p for d in found.values()])
    table.diffs = {k: (d, float(qk)) for (k, d), qk in zip(found.items(), q)}


# ----------------------------------------------------------------------------- formatting


def format_cell(iv: Interval) -> str:
    if iv.kind == "t":
        return f"{iv.mean:.4g} ± {iv.half_width:.2g} (n={iv.n})"
    if iv.kind in ("bootstrap", "sem"):
        return f"{iv.mean:.4g} [{iv.lo:.4g}, {iv.hi:.4g}] (n=1, {iv.kind})"
    return f"{iv.mean:.4g} (n=1)"


def format_diff(d: Difference, q: float) -> str:
    mark = " *" if q <= ALPHA else ""
    return f"{d.mean:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}] p={d.p:.2g} q={q:.2g} {d.kind}{mark}"


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
    if "t" in kinds:
        notes.append("mean ± 95% half-width (n=seeds): Student-t interval over seeds")
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
        notes.append(f"difference vs {table.rows}={table.baseline}: mean [95% interval], p, q; paired by seed where "
                     f"two or more seeds match, else Welch (unpaired); q = Benjamini-Hochberg adjusted p over {m} "
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
                   "n": iv.n, "interval": iv.kind, "mixed_versions": "; ".join(cell.mixed)}
            if table.baseline is not None:
                d, q = table.diffs.get((r, c), (None, math.nan))
                row.update({"diff": d.mean if d else math.nan, "diff_lo": d.lo if d else math.nan,
                            "diff_hi": d.hi if d else math.nan, "p": d.p if d else math.nan, "q": q,
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


# ----------------------------------------------------------------------------- commands


def compare_runs(experiment, uri, rows, cols, metric, where, fmt, output, plot, x, group,
                 average: Sequence[str] = (), baseline: str | None = None) -> str:
    if fmt not in ("table", "markdown", "csv"):
        raise UserError(f"--format must be table, markdown or csv, not '{fmt}'")
    df, experiment, ignored = load_runs(experiment, uri)
    df = filter_runs(df, where)
    metric = pick_metric(df, metric, experiment)
    table = build_table(df, rows, cols, metric, average)
    if baseline:
        add_baseline(table, baseline)
    notes = table_notes(table, experiment, ignored)
    if fmt == "csv":
        text = render_csv(csv_rows(table), notes, rows, cols).rstrip("\n")
    elif fmt == "markdown":
        text = render_markdown(table, notes)
    else:
        text = render_text(table, notes)
    if output:
        Path(output).write_text(text + "\n")
    if plot:
        text += f"\nplot: {write_plot(df, experiment, metric, x, group, Path(plot), average)}"
    return text


def write_plot(df, experiment: str, metric: str, x: str, group: str, path: Path, average: Sequence[str]) -> Path:
    """``metric`` against ``x`` (a metric, e.g. nfe), one line per ``group``, with 95% error bars;
    each point follows the table's aggregation rules."""
    import pandas as pd

    from .plots import line_plot

    if f"metrics.{x}" not in df.columns:
        metrics = sorted(c[len("metrics."):] for c in df.columns if c.startswith("metrics."))
        raise UserError(f"--x: no metric '{x}'", hint=f"metrics: {', '.join(metrics)}")
    table = build_table(df[df[f"metrics.{x}"].notna()], group, x, metric, average)
    points = pd.DataFrame([{group: r, x: float(c), metric: cell.interval.mean, "lo": cell.interval.lo,
                            "hi": cell.interval.hi} for (r, c), cell in table.cells.items()])
    floor_col = f"metrics.{metric}_floor"
    floor = float(df[floor_col].mean()) if floor_col in df.columns else None
    line_plot(points, x, metric, group, path, title=f"{experiment}: {metric} vs {x} (95% intervals)",
              logx=(x == "nfe"), floor=floor, lo="lo", hi="hi")
    return path


def write_suite_comparison(uri: str, experiment: str, case_ids: Sequence[str], results_dir: Path,
                           echo=print) -> None:
    """End of ``bench run``: write ``comparison.md`` and ``comparison.csv`` into the results directory
    (the parent run logs them as artifacts). A failure here only warns: the cases are done."""
    try:
        tables = suite_comparison(uri, experiment, case_ids)
    except Exception as exc:  # noqa: BLE001 (e.g. an axis that cannot be tabulated without --average)
        echo(f"bench: no comparison table ({exc})")
        return
    if tables is not None:
        (results_dir / "comparison.md").write_text(tables[0])
        (results_dir / "comparison.csv").write_text(tables[1])


def suite_comparison(uri: str, experiment: str, case_ids: Sequence[str]) -> tuple[str, str] | None:
    """The comparison tables of one suite (markdown, csv) for its parent run: every preferred metric,
    sampler as columns, the other varying axes (not seeds) as rows, averaged over seeds only.
    None when no case has a preferred metric."""
    df, _, ignored = load_runs(experiment, uri)
    df = df[df["tags.bench.case_id"].isin(set(case_ids))]
    present = [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and df[c].notna().any()]
    quality = [m for m in PREFERRED if m in present and m not in TIMING] or \
        sorted(m for m in present if m not in BOOKKEEPING and not m.startswith("train_")
               and not m.endswith(AUXILIARY))[:6]
    metrics = quality + [m for m in TIMING if m in present]
    if df.empty or not metrics:
        return None
    varying = [a for a in _axes_in(df) if a not in REPLICATES and a != "sampler"
               and df[f"tags.bench.{a}"].nunique() > 1]
    rows = "+".join(varying) or "family"
    md, records, notes = [], [], []
    for metric in metrics:
        table = build_table(df, rows, "sampler", metric)
        table_note = table_notes(table, experiment, ignored)
        md.append(render_markdown(table, table_note))
        records += csv_rows(table)
        notes += [n for n in table_note if n not in notes]
    return "\n\n".join(md) + "\n", render_csv(records, notes, rows, "sampler")


def power_report(experiment, uri, metric, delta: float, where, rows, cols, average: Sequence[str] = (),
                 baseline: str | None = None, alpha: float = 0.05, power: float = 0.8) -> str:
    """Seeds needed to detect ``delta`` in ``metric`` (paired t, two-sided ``alpha``, ``power``) from
    the pilot's per-seed spread, and how the sample count trades against seeds (docs/suites.md)."""
    import numpy as np

    if delta == 0 or delta != delta:
        raise UserError("--delta must be a non-zero number")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise UserError("--alpha and --power must lie strictly between 0 and 1")
    df, experiment, _ = load_runs(experiment, uri)
    df = filter_runs(df, where)
    metric = pick_metric(df, metric, experiment)
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
        what = "sqrt(2) x the pooled per-seed sd (two independent conditions; pairing by seed can only help)"
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
    lines += _sample_tradeoff(df, metric, sd, delta, alpha, power, paired_sides=2)
    return "\n".join(lines)


def _sample_tradeoff(df, metric, sd, delta, alpha, power, paired_sides: int) -> list[str]:
    """How seeds trade against samples when the per-case interval shrinks as 1/sqrt(samples)."""
    import numpy as np

    lo, hi, sem = (df.get(f"metrics.{metric}_{s}") for s in ("ci_lo", "ci_hi", "sem"))
    if lo is not None and hi is not None and (lo.notna() & hi.notna()).any():
        per_case = ((hi - lo) / (2 * Z95)).dropna()
        source = f"{metric}_ci_lo/_ci_hi"
    elif sem is not None and sem.notna().any():
        per_case, source = sem.dropna(), f"{metric}_sem"
    else:
        return [f"samples: no per-case interval ({metric}_ci_lo/_ci_hi or {metric}_sem) logged, so the "
                f"sample-count trade-off is not available"]
    sd_sampling = math.sqrt(paired_sides * float(np.mean(per_case.to_numpy(dtype=float) ** 2)))
    n0_col = df.get("params.eval.num_samples")
    n0 = float(np.median(n0_col.dropna().astype(float))) if n0_col is not None and n0_col.notna().any() else None
    lines = [f"samples: per-case sd from {source}: {sd_sampling / math.sqrt(paired_sides):.4g} per run, "
             f"{sd_sampling:.4g} for a difference"
             + (f", at {n0:g} samples" if n0 else "") + "; assumed to scale as 1/sqrt(samples)"]
    if sd_sampling > sd:
        lines.append("  (the per-case sd exceeds the per-seed sd: training noise taken as 0)")
    lines.append(f"  {'samples' if n0 else 'x pilot samples':>16}  {'sd of difference':>16}  {'seeds needed':>12}")
    for f in (0.25, 0.5, 1, 2, 4, 8):
        sd_n = sd_at_samples(sd, sd_sampling, 1.0, f)
        lines.append(f"  {(f'{f * n0:g}' if n0 else f'{f:g}'):>16}  {sd_n:16.4g}  {seeds_for_power(sd_n, delta, alpha, power):12d}")
    return lines
