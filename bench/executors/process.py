"""A pool of worker processes. Workers compute; results come back to the driver, which alone
writes MLflow. The store's file locks make concurrent cases that share a model train it once."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable

from ..runner import CaseJob, run_case


def _failed(job: CaseJob, error: str) -> dict:
    """The record of a case whose worker died before it could write one."""
    from pathlib import Path

    from ..runner import case_slug, write_record
    from ..suite import Case

    case = Case.from_dict(job.case)
    now = time.time()
    case_dir = Path(job.settings.results_dir) / "cases" / case_slug(case.id)
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "traceback.txt").write_text(error + "\n")
    record = {"case_id": case.id, "case_hash": case.hash, "train_key": case.train_key, "labels": case.labels(),
              "status": "failed", "error": error, "config": case.config(), "versions": case.versions,
              "metrics": {}, "series": {}, "timings": {}, "artifacts": ["traceback.txt"], "started": now,
              "finished": now, "case_dir": str(case_dir)}
    write_record(case_dir, record)
    return record


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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor:
    def __init__(self, workers: int | None = None, **_: Any):
        self.workers = max(1, workers or (os.cpu_count() or 1))

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        jobs = distinct_training_first(list(jobs))
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        for job in jobs:
            job.settings.quiet = True
            job.settings.threads = job.settings.threads or threads
        pending = list(jobs)
        while pending:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(threads,)) as pool:
                futures = {pool.submit(run_case, job): job for job in pending}
                pending = []
                not_done = set(futures)
                broken = False
                while not_done:
                    done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                    for fut in done:
                        job = futures[fut]
                        try:
                            on_result(fut.result())
                        except BrokenProcessPool:
                            broken = True
                            pending.append(job)
                        except Exception as exc:  # a worker-side error outside the case runner
                            on_result(_failed(job, f"{type(exc).__name__}: {exc}"))
                    if broken:
                        pending.extend(futures[f] for f in not_done)
                        break
                if broken:
                    # a worker died (segfault, OOM kill): we cannot tell which job killed it when several
                    # were running, so rerun the survivors one at a time and fail only the culprit.
                    for job in pending:
                        try:
                            with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                                     initargs=(threads,)) as solo:
                                on_result(solo.submit(run_case, job).result())
                        except BrokenProcessPool:
                            on_result(_failed(job, "worker process crashed (killed or segfault)"))
                    pending = []
