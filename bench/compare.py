"""``bench compare``: read runs back from MLflow (``mlflow.search_runs`` -> pandas) and pivot them.

Keys for rows, columns, ``--where`` and ``--group``: ``dataset``, ``family``, ``sampler``, ``seed``
(the case labels), any dotted param (``sampler.name``, ``sampler.steps``, ``family.noise.name``), a
tag or a metric; ``a+b`` joins several keys. When a case was run more than once, its latest run wins.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean
from .tracking import _quiet_mlflow, resolve_uri, search_runs_frame

PREFERRED = ("fid", "swd", "bpd", "nll", "kid", "mmd", "psnr", "ssim", "sample_time_s", "train_time_s")
LABELS = ("dataset", "family", "sampler", "seed")


def load_runs(experiment: str | None, uri: str | None):
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
    return df.drop_duplicates(subset=["tags.bench.case_hash"], keep="first"), experiment


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
    known = list(LABELS) + [c.split(".", 1)[1] for c in df.columns if c.startswith(("params.", "metrics."))]
    close = did_you_mean(key, known)
    raise UserError(f"unknown key '{key}'", hint=f"did you mean '{close}'?" if close else "try dataset, family, sampler")


def _markdown(pivot) -> str:
    cols = [str(c) for c in pivot.columns]
    lines = [f"| {pivot.index.name or ''} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in pivot.iterrows():
        cells = ["" if v != v else f"{v:.4g}" for v in row.values]
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs(experiment, uri, rows, cols, metric, where, fmt, output, plot, x, group) -> str:
    if fmt not in ("table", "markdown", "csv"):
        raise UserError(f"--format must be table, markdown or csv, not '{fmt}'")
    df, experiment = load_runs(experiment, uri)
    for cond in where:
        if "=" not in cond:
            raise UserError(f"--where expects key=value, got '{cond}'")
        k, v = cond.split("=", 1)
        df = df[resolve_key(df, k) == v]
    if df.empty:
        raise UserError("no runs match the --where filters")
    metrics = [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and df[c].notna().any()]
    if metric is None:
        metric = next((m for m in PREFERRED if m in metrics), None)
        if metric is None:
            raise UserError("no metric to compare", hint="pass --metric")
    if metric not in metrics:
        close = did_you_mean(metric, metrics)
        raise UserError(f"no metric '{metric}' in experiment '{experiment}'",
                        hint=f"did you mean '{close}'?" if close else f"metrics: {', '.join(sorted(metrics))}")
    frame = df.assign(_row=resolve_key(df, rows), _col=resolve_key(df, cols))
    pivot = frame.pivot_table(index="_row", columns="_col", values=f"metrics.{metric}", aggfunc="mean")
    pivot = pivot.loc[sorted(pivot.index, key=natural_key), sorted(pivot.columns, key=natural_key)]
    pivot.index.name = rows
    pivot.columns.name = None
    if fmt == "csv":
        text = pivot.to_csv()
    elif fmt == "markdown":
        text = _markdown(pivot)
    else:
        text = f"{metric} ({experiment}; rows={rows}, cols={cols}; mean over seeds)\n" + \
            pivot.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-")
    if output:
        Path(output).write_text(text + "\n")
    if plot:
        from .plots import line_plot

        if f"metrics.{x}" not in df.columns:
            raise UserError(f"--x: no metric '{x}'", hint=f"metrics: {', '.join(sorted(metrics))}")
        pf = frame.assign(_group=resolve_key(df, group))[["_group", f"metrics.{x}", f"metrics.{metric}"]].dropna()
        pf = pf.groupby(["_group", f"metrics.{x}"], as_index=False).mean()
        pf.columns = [group, x, metric]
        floor_col = f"metrics.{metric}_floor"
        floor = float(frame[floor_col].mean()) if floor_col in frame.columns else None
        line_plot(pf, x, metric, group, Path(plot), title=f"{experiment}: {metric} vs {x}", logx=(x == "nfe"),
                  floor=floor)
        text += f"\nplot: {plot}"
    return text
