"""Sequential execution on this machine (the default): one case at a time in one case worker, a
child process the driver can stop when a case runs past its budget (see ``worker.py``)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..runner import CaseJob
from .worker import CaseWorker, run_jobs


class LocalExecutor:
    def __init__(self, workers: int | None = None, **_: Any):
        import torch

        self.workers = 1
        # the case runs with the driver's thread count unless --threads says otherwise (bit-identical
        # results); the worker starts now, so its imports overlap the driver's MLflow set-up
        self.threads = torch.get_num_threads()
        self.pool = [CaseWorker(self.threads)]

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        run_jobs(jobs, on_result, workers=1, threads=self.threads, pool=self.pool)
