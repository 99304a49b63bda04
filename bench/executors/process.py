"""A pool of case workers (``--workers N``). Workers compute; records come back to the driver, which
alone writes MLflow. The store's file locks make concurrent cases that share a model train it once.
Budgets, crashes, signals and the driver's death are handled by ``worker.py``, as for ``local``."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..runner import CaseJob
from .plan import fitting_workers
from .worker import CaseWorker, run_jobs


def distinct_training_first(jobs: list[CaseJob]) -> list[CaseJob]:
    """Order jobs so that the first case of every training key comes before any case that would
    reuse a checkpoint: parallel workers then train different models instead of one waiting on the
    store lock for another's training."""
    from ..suite import Case

    seen: set[str] = set()
    first, rest = [], []
    for job in jobs:
        key = Case.from_dict(job.case).train_key
        (rest if key in seen else first).append(job)
        seen.add(key)
    return first + rest


class ProcessExecutor:
    """``workers`` defaults to as many as fit: ``cores // cpus``, where ``cpus`` (the session passes
    the largest among the suite's cases, :func:`plan.case_cpus`) is the cores one case occupies, so
    that workers x threads <= cores. Each case runs on its own ``threads``.

    ``gpus`` > 0 (the session passes the number of visible GPUs when every case runs on ``cuda``):
    worker i sees only GPU ``i mod gpus`` (``CUDA_VISIBLE_DEVICES``, so it is that worker's ``cuda``),
    and ``workers`` defaults to ``gpus``, one case per GPU at a time."""

    def __init__(self, workers: int | None = None, gpus: int = 0, cpus: int = 1, **_: Any):
        self.workers = max(1, workers or gpus or fitting_workers(cpus))
        self.pool = [CaseWorker(cpus, i % gpus if gpus else None)  # start while MLflow opens
                     for i in range(self.workers)]

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        jobs = distinct_training_first(list(jobs))
        for job in jobs:
            job.settings.quiet = True
        used = self.pool[:max(1, len(jobs))]
        for extra in self.pool[len(used):]:  # more workers than cases
            extra.close()
        run_jobs(jobs, on_result, workers=len(used), threads=1, pool=used)
