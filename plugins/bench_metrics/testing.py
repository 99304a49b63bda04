"""Build the contexts bench hands to metrics, outside a run (for tests and for ``bench ref``).

    ctx = metric_context(dataset, samples, store="/tmp/store")
    FID(extractor="random-proj", context=ctx.build_context).compute(ctx)

Components are built through the plugin manager's registries, as in a run.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.context import BuildContext, MetricContext, MetricSkipped, SampleOutput
from bench.store import Store


_TEMP_DIRS: list[str] = []


def _tempdir(prefix: str) -> str:
    """A temporary directory removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    if not _TEMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _TEMP_DIRS])
    _TEMP_DIRS.append(path)
    return path


def registries():
    from bench.plugins import get_manager

    return get_manager().registries


def build_context(dataset: Any, store: Store | str | Path, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> BuildContext:
    """A :class:`BuildContext` of ``dataset`` whose ``build`` uses the registered components."""
    regs = registries()
    store = store if isinstance(store, Store) else Store(store)
    return BuildContext.from_registries(regs, seed=seed, store=store, dataset=dataset, log=log)


def metric_context(dataset: Any, samples: Any = None, *, store: Store | str | Path | None = None,
                   family: Any = None, sampler: Any = None, params: dict | None = None, seed: int = 0,
                   artifact_dir: str | Path | None = None, resample: Callable[[int], SampleOutput] | None = None,
                   case_config: dict | None = None, log: Callable[[str], None] | None = None) -> MetricContext:
    """A :class:`MetricContext` as the runner makes it (``store`` and ``artifact_dir`` default to
    temporary directories, removed at exit)."""
    store = store or _tempdir("bench-store-")
    adir = Path(artifact_dir or _tempdir("bench-artifacts-"))
    adir.mkdir(parents=True, exist_ok=True)
    bctx = build_context(dataset, store, seed, log)

    def no_sampler(n: int) -> SampleOutput:
        raise MetricSkipped("the case has no sampler")

    return MetricContext(samples, dataset, family, sampler, dict(params or {}), seed, bctx.store, adir, bctx,
                         resample or no_sampler, case_config=dict(case_config or {}))
