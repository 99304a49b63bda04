"""``bench ref``: precompute what metrics need from real data alone (reference statistics) into the
store, before any case runs. Metrics opt in with an optional ``precompute(dataset, num_samples,
store, log)`` method (see :class:`bench.protocols.Metric`); others are listed as having nothing to do.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from .context import BuildContext
from .store import Store, content_key
from .suite import Case, label


def items_from_cases(cases: list[Case]) -> list[tuple[dict, dict, int, int]]:
    """(dataset spec, metric spec, eval.num_samples, seed) for every metric a suite's cases run."""
    return [(case.dataset, spec, case.eval["num_samples"], case.seed)
            for case in cases for spec in case.metrics if label(spec) not in case.skipped_metrics]


def precompute(items: list[tuple[dict, dict, int | None, int]], registries, store_dir: str,
               echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Call each metric's ``precompute`` once per distinct (dataset, metric spec, num_samples, seed)."""
    store = Store(store_dir)
    datasets: dict[str, Any] = {}
    done: set[str] = set()
    summaries = []
    for dataset_spec, spec, num_samples, seed in items:
        key = content_key(dataset_spec, spec, num_samples, seed)
        if key in done:
            continue
        done.add(key)
        dkey = content_key(dataset_spec, seed)
        if dkey not in datasets:
            ctx = BuildContext.from_registries(registries, seed=seed, store=store)
            datasets[dkey] = registries.dataset.create(dataset_spec, context=ctx)
        dataset = datasets[dkey]
        what = f"{label(dataset_spec)} / {label(spec)}"
        modalities = registries.metric.entry(spec["name"]).meta.get("modalities")
        if modalities and dataset.info.modality not in modalities:
            echo(f"  {what}: does not apply to {dataset.info.modality} data")
            continue
        ctx = BuildContext.from_registries(registries, seed=seed, store=store, dataset=dataset)
        metric = registries.metric.create(spec, context=ctx)
        if not hasattr(metric, "precompute"):
            echo(f"  {what}: nothing to precompute")
            continue
        summary = metric.precompute(dataset, num_samples, store, lambda m: None)
        summaries.append({"dataset": label(dataset_spec), "metric": label(spec), **(summary or {})})
        echo(f"  {what}: {_describe(summary)}")
    return summaries


def _describe(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "done"
    parts = []
    for part in ("reference", "floor"):
        entry = summary.get(part)
        if isinstance(entry, dict):
            state = "cached" if entry.get("cached") else "computed"
            parts.append(f"{part} {entry.get('split', '')} n={entry.get('num_samples', '?')} {state}")
    return ", ".join(parts) or json.dumps(summary, default=str)[:200]
