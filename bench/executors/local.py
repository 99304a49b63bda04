"""Sequential execution on this machine: one case at a time in one case worker, a child process
the driver can stop when a case runs past its budget (see ``worker.py``). ``bench run`` uses it when
a pool would not run cases side by side (``plan.default_executor``), or by name (``--executor local``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..runner import CaseJob
from .worker import CaseWorker, run_jobs


class LocalExecutor:
    def __init__(self, workers: int | None = None, **_: Any):
        self.workers = 1
        # every case sets its own torch thread count (its ``threads``); the worker starts now, so its
        # imports overlap the driver's MLflow set-up
        self.pool = [CaseWorker(1)]

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        run_jobs(jobs, on_result, workers=1, threads=1, pool=self.pool)
