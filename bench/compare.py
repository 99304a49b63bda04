"""``bench compare``: read runs back from MLflow (``mlflow.search_runs`` ->
pandas), keep the latest run of each case id, and tabulate a metric with its uncertainty.

Keys for rows, columns, ``--where``, ``--group`` and ``--baseline``: ``dataset``, ``family``,
``sampler``, ``seed``, ``sample_seed`` (the case labels, also the *axes* of a suite), any dotted
param (``sampler.name``, ``sampler.steps``), a tag or a metric; ``a+b`` joins several keys.

Aggregation rules (docs/suites.md, "Comparing runs"):

- only the latest run of each case id counts (an older run of the same case, e.g. from an older
  plugin version, is ignored); a cell whose runs carry different ``bench.version`` /
  ``bench.plugin.*`` / ``bench.version.*`` tags is flagged;
- seeds (``seed``, ``sample_seed``) are the replicates: a cell is the mean over its independent
  replicates (:func:`bench.compare_table.replicate_units`: training seeds, each first averaged over
  its sample seeds, or the sample seeds of one training seed) with a 95% Student-t interval
  (bench.stats); any other axis that takes several values inside one cell must be named in
  ``--average`` (per seed, its values are averaged first), otherwise the table is refused;
- ``--baseline KEY=VALUE`` adds each row's difference against the baseline row (bench.stats:
  paired by seed and sample seed, else Welch), with Benjamini-Hochberg adjusted p-values over all
  comparisons.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from .compare_table import (REPLICATES, Cell, Table, csv_rows, render_csv, render_markdown, render_text,
                            replicate_units, table_notes)
from .errors import UserError, did_you_mean
from .stats import Z95, Difference, Interval, benjamini_hochberg, paired_difference, t_interval, welch_difference
from .tracking import _quiet_mlflow, resolve_uri, search_runs_frame

PREFERRED = ("fid", "swd", "bpd", "nll", "kid", "mmd", "psnr", "ssim", "sample_time_s", "train_time_s")
AXES = ("dataset", "family", "sampler", "seed", "sample_seed")
LABELS = AXES
VERSION_TAGS = ("tags.bench.version", "tags.bench.plugin.")
TIMING = ("sample_time_s", "train_time_s")
BOOKKEEPING = {"nfe", "steps", "num_params", "num_samples", "final_loss", "peak_rss_mb", "peak_gpu_mem_mb", "samples_per_s", "ms_per_nfe"}
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
    return fill_sample_seed(latest), experiment, len(df) - len(latest)


def fill_sample_seed(df):
    """Runs logged before sample seeds existed have no ``bench.sample_seed`` tag: they sampled with
    their training seed, which fills the tag where other runs of the experiment have one."""
    if "tags.bench.sample_seed" in df.columns and "tags.bench.seed" in df.columns:
        return df.assign(**{"tags.bench.sample_seed": df["tags.bench.sample_seed"].fillna(df["tags.bench.seed"])})
    return df


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


def _axes_in(df) -> list[str]:
    return [a for a in AXES if f"tags.bench.{a}" in df.columns]


def default_rows(df, cols: str, average: Sequence[str] = ()) -> str:
    """The rows when none are given: every axis that varies (seeds, the ``cols`` keys and the
    ``--average`` axes excepted), joined with ``+``; the default table averages over seeds only."""
    taken = {k.split(".")[0] for k in cols.split("+")} | set(average)
    varying = [a for a in _axes_in(df) if a not in REPLICATES and a not in taken
               and df[f"tags.bench.{a}"].nunique() > 1]
    return "+".join(varying) or "family"


def _check_average(df, average: Sequence[str]) -> None:
    axes = _axes_in(df)
    for name in average:
        if name not in axes:
            close = did_you_mean(name, axes)
            raise UserError(f"--average: '{name}' is not an axis of these runs",
                            hint=f"did you mean '{close}'?" if close else f"axes: {', '.join(axes)}")


def _averaged_axes(frame, axes: list[str]) -> dict[str, list[str]]:
    """Axis -> its values, for every axis that takes several values inside some cell (the sample seed
    only where it varies within a training seed: otherwise it follows the seed)."""
    out: dict[str, list[str]] = {}
    for axis in axes:
        by = ["_row", "_col"] + (["tags.bench.seed"] if axis == "sample_seed" and "seed" in axes else [])
        counts = frame.groupby(by, dropna=False)[f"tags.bench.{axis}"].nunique(dropna=False)
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
            raw = {(k if isinstance(k, tuple) else (k,)): float(v) for k, v in grouped.items()}
        else:
            raw = {(): float(sub[value].mean())}
        units, unit = replicate_units(raw, replicates)
        if len(units) >= 2:
            interval = t_interval(list(units.values()))
        else:
            v = next(iter(units.values()))
            interval = _per_case_interval(sub.iloc[0], metric, v) if len(sub) == 1 else Interval(v, math.nan, math.nan, 1, "single")
        mixed = {col[len("tags."):]: sorted(sub[col].fillna("-").astype(str).unique())
                 for col in version_cols if sub[col].fillna("-").nunique() > 1}
        cells[(r, c)] = Cell(units, interval, mixed, raw, unit)
    table = Table(metric, rows, cols, cells, sorted({k[0] for k in cells}, key=natural_key),
                  sorted({k[1] for k in cells}, key=natural_key), list(averaged), replicates=replicates)
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
    names = [a for a in REPLICATES if a in table.replicates]
    for (r, c), cell in table.cells.items():
        base = table.cells.get((val, c))
        if r == val or base is None:
            continue
        common = sorted(set(cell.raw) & set(base.raw))  # the same (seed, sample seed) on both sides
        mine, theirs = (replicate_units({k: side.raw[k] for k in common}, names)[0] for side in (cell, base))
        if len(mine) >= 2 and common != [()]:
            keys = sorted(mine)
            found[(r, c)] = paired_difference([mine[k] for k in keys], [theirs[k] for k in keys])
        elif len(cell.units) >= 2 and len(base.units) >= 2:
            found[(r, c)] = welch_difference(list(cell.units.values()), list(base.units.values()))
    q = benjamini_hochberg([d.p for d in found.values()])
    table.diffs = {k: (d, float(qk)) for (k, d), qk in zip(found.items(), q)}


# ----------------------------------------------------------------------------- commands


def compare_runs(experiment, uri, rows, cols, metric, where, fmt, output, plot, x, group,
                 average: Sequence[str] = (), baseline: str | None = None) -> str:
    if fmt not in ("table", "markdown", "csv"):
        raise UserError(f"--format must be table, markdown or csv, not '{fmt}'")
    df, experiment, ignored = load_runs(experiment, uri)
    df = filter_runs(df, where)
    metric = pick_metric(df, metric, experiment)
    rows = rows or (baseline.split("=", 1)[0] if baseline and "=" in baseline else default_rows(df, cols, average))
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
    each point follows the table's aggregation rules, and the legend gives each line's n. When the runs'
    guidance scales differ and ``x`` is the default ``nfe`` (or ``x`` is ``guidance``), the guidance plot
    (:func:`write_guidance_plot`)."""
    import pandas as pd

    from .plots import line_plot

    if x == GUIDANCE or (x == "nfe" and guidance_scales(df).nunique() > 1):
        return write_guidance_plot(df, experiment, metric, group, path, average)
    if f"metrics.{x}" not in df.columns:
        metrics = sorted(c[len("metrics."):] for c in df.columns if c.startswith("metrics."))
        raise UserError(f"--x: no metric '{x}'", hint=f"metrics: {', '.join(metrics)}")
    table = build_table(df[df[f"metrics.{x}"].notna()], group, x, metric, average)
    ns: dict[str, set[int]] = {}
    for (r, _), cell in table.cells.items():
        ns.setdefault(r, set()).add(cell.interval.n)
    shown = {r: f"{r} (n={min(n)})" if len(n) == 1 else f"{r} (n={min(n)}-{max(n)})" for r, n in ns.items()}
    points = pd.DataFrame([{group: shown[r], x: float(c), metric: cell.interval.mean, "lo": cell.interval.lo,
                            "hi": cell.interval.hi} for (r, c), cell in table.cells.items()])
    floor_col = f"metrics.{metric}_floor"
    floor = float(df[floor_col].mean()) if floor_col in df.columns else None
    line_plot(points, x, metric, group, path, title=f"{experiment}: {metric} vs {x} (95% intervals)",
              logx=(x == "nfe"), floor=floor, lo="lo", hi="hi")
    return path


GUIDANCE = "guidance"


def guidance_scales(df):
    """Each run's classifier-free guidance scale (the ``sampler.guidance`` param; 0 where not set)."""
    import pandas as pd

    col = f"params.sampler.{GUIDANCE}"
    if col not in df.columns:
        return pd.Series(0.0, index=df.index)
    return pd.to_numeric(df[col], errors="coerce").fillna(0.0)


def write_guidance_plot(df, experiment: str, metric: str, group: str, path: Path, average: Sequence[str]) -> Path:
    """The fidelity/diversity frontier: ``metric`` and, when the runs have them, precision and recall
    (``prc_precision``, ``prc_recall``: metrics named ``precision``/``recall`` or ending so) against
    the guidance scale w, one line per ``group``, 95% error bars as in the table."""
    import pandas as pd

    from .plots import panels_plot

    frame = df.assign(**{f"metrics.{GUIDANCE}": guidance_scales(df)})
    present = [c[len("metrics."):] for c in frame.columns if c.startswith("metrics.") and frame[c].notna().any()]
    panels = []
    for m in dict.fromkeys([metric] + [m for m in sorted(present) if m in ("precision", "recall")
                                       or m.endswith(("_precision", "_recall"))]):
        table = build_table(frame[frame[f"metrics.{m}"].notna()], group, GUIDANCE, m, average)
        points = pd.DataFrame([{group: r, GUIDANCE: float(c), m: cell.interval.mean, "lo": cell.interval.lo,
                                "hi": cell.interval.hi} for (r, c), cell in table.cells.items()])
        floor_col = f"metrics.{m}_floor"
        panels.append((points, m, float(frame[floor_col].mean()) if floor_col in frame.columns else None))
    panels_plot(panels, GUIDANCE, group, path, lo="lo", hi="hi",
                title=f"{experiment}: {', '.join(p[1] for p in panels)} vs guidance scale w (95% intervals)")
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
    rows = default_rows(df, "sampler")
    md, records, notes = [], [], []
    for metric in metrics:
        table = build_table(df, rows, "sampler", metric)
        table_note = table_notes(table, experiment, ignored)
        md.append(render_markdown(table, table_note))
        records += csv_rows(table)
        notes += [n for n in table_note if n not in notes]
    return "\n\n".join(md) + "\n", render_csv(records, notes, rows, "sampler")
