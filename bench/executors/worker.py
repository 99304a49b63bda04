"""Case workers: child processes that run cases one at a time while the driver watches them.

Every executor that runs cases on this machine (``local`` is one worker, ``process`` is N) runs
them here, so that the driver can always stop a case:

* a case past ``budget.timeout_s`` + a grace (``grace_s``; the runner's own deadline checks usually
  fire first) is killed with its worker, recorded as failed with "time budget exceeded", and a fresh
  worker takes the next case: a component that never returns cannot hang the suite;
* a worker that dies (segfault, OOM kill) fails its one case;
* on SIGINT/SIGTERM the driver sends SIGTERM to its workers (each records its running case as
  killed), waits at most ``STOP_GRACE_S`` and kills what is left; queued cases are not started;
* workers die with the driver (``signals.die_with_parent``), even after ``kill -9``.

A worker is a persistent ``spawn`` child: it pays the interpreter start once per run and keeps the
per-process caches (datasets) between cases, as the old in-process executor did.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Iterable

from ..runner import CaseJob
from . import signals

STOP_GRACE_S = 5.0
STARTUP_S = 300.0  # allowance for a worker's first plugin imports, before a case's clock starts


def grace_s(timeout_s: float) -> float:
    """Extra time past ``timeout_s`` before the watchdog kills a case (1 s, or 10% of long budgets)."""
    return min(max(1.0, 0.1 * timeout_s), 60.0)


def _serve(conn, parent_pid: int, threads: int) -> None:
    """The worker loop: receive a job, load its plugins, say "started" (the driver starts the case's
    clock), run it, send ("record", record); exit on None, EOF or a signal. ``threads``: torch's
    thread count while the worker imports and waits (each case runs on its own ``threads``)."""
    signals.die_with_parent(parent_pid)
    signals.install()
    try:
        import torch

        torch.set_num_threads(threads)
        from ..plugins import get_manager
        from ..runner import run_case

        while True:
            job = conn.recv()
            if job is None:
                break
            get_manager(job.settings.plugins)
            conn.send(("started", None))
            conn.send(("record", run_case(job)))
    except (KeyboardInterrupt, EOFError, OSError):
        pass  # a signal (the runner has recorded the case as killed) or the driver went away
    finally:
        conn.close()
    # every record is written and sent: skip the interpreter's teardown (seconds with torch loaded)
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _case_dir(job: CaseJob) -> Path:
    from ..runner import case_slug
    from ..suite import Case

    return Path(job.settings.results_dir) / "cases" / case_slug(Case.from_dict(job.case).id)


def failed_record(job: CaseJob, error: str, status: str = "failed") -> dict:
    """The record of a case whose worker could not write one (killed, crashed, past its budget)."""
    from ..runner import write_record
    from ..suite import Case

    case = Case.from_dict(job.case)
    now = time.time()
    case_dir = _case_dir(job)
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "traceback.txt").write_text(error + "\n")
    record = {"case_id": case.id, "case_hash": case.hash, "train_key": case.train_key, "labels": case.labels(),
              "status": status, "error": error, "config": case.config(), "versions": case.versions,
              "metrics": {}, "series": {}, "timings": {}, "artifacts": ["traceback.txt"], "started": now,
              "finished": now, "case_dir": str(case_dir)}
    write_record(case_dir, record)
    return record


@contextlib.contextmanager
def _visible_gpu(gpu: int | None):
    """``CUDA_VISIBLE_DEVICES=gpu`` in this process's environment while a child is spawned (the child
    inherits it; CUDA reads it when first initialised there), restored afterwards."""
    if gpu is None:
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [g for g in (before or "").split(",") if g.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[gpu] if gpu < len(visible) else str(gpu)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class CaseWorker:
    """One child process, one case at a time."""

    def __init__(self, threads: int, gpu: int | None = None):
        self.threads = threads
        self.gpu = gpu  # pinned: the child sees only this GPU (CUDA_VISIBLE_DEVICES), as cuda:0
        self.job: CaseJob | None = None
        self.deadline: float | None = None
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, os.getpid(), self.threads), daemon=True,
                                name="bench-case-worker")
        with _visible_gpu(self.gpu):
            self.proc.start()
        child.close()
        self.job, self.deadline = None, None

    def submit(self, job: CaseJob) -> None:
        timeout = (job.case.get("budget") or {}).get("timeout_s")
        self.job = job
        self.timeout_s = timeout
        self.deadline = None if timeout is None else time.monotonic() + STARTUP_S + timeout + grace_s(timeout)
        self.conn.send(job)

    def waitables(self) -> list:
        return [self.conn, self.proc.sentinel]

    def collect(self) -> dict | None:
        """The running case's record if it ended (done, crashed or past its budget), else None."""
        if self.job is None:
            return None
        while self.conn.poll():
            try:
                kind, record = self.conn.recv()
            except (EOFError, OSError):
                break
            if kind == "started" and self.timeout_s is not None:
                self.deadline = time.monotonic() + self.timeout_s + grace_s(self.timeout_s)
            elif kind == "record":
                self.job, self.deadline = None, None
                return record
        job = self.job
        if not self.proc.is_alive():
            code = self.proc.exitcode
            record = failed_record(job, f"worker process crashed (killed or segfault; exit code {code})")
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.kill()
            record = self._budget_record(job)
        else:
            return None
        self.conn.close()
        self._start()
        return record

    def _budget_record(self, job: CaseJob) -> dict:
        from ..store import Store
        from .. import trainer

        phase_file = _case_dir(job) / "phase.txt"
        phase = phase_file.read_text().strip() if phase_file.exists() else "startup"
        t = self.timeout_s
        error = (f"BudgetExceeded: time budget exceeded: timeout_s={t:g} s, and the case did not return "
                 f"within {t + grace_s(t):g} s (during {phase}); its worker was killed")
        if phase == "training":
            trainer.record_failure(Store(job.settings.store), _train_key(job), error, t)
        return failed_record(job, error)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
            self.proc.join(2)
            self.kill()
        self.conn.close()


def _train_key(job: CaseJob) -> str:
    from ..suite import Case

    return Case.from_dict(job.case).train_key


def stop(pool: list[CaseWorker], on_killed: Callable[[dict], None] | None = None) -> None:
    """SIGTERM every worker (a running case records itself killed), wait up to ``STOP_GRACE_S``, kill
    the rest, and write a killed record for every running case that could not write its own."""
    for w in pool:
        if w.proc.is_alive():
            with_suppressed(os.kill, w.proc.pid, signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE_S
    for w in pool:
        w.proc.join(max(0.0, end - time.monotonic()))
        w.kill()
    for w in pool:
        if w.job is not None and not (_case_dir(w.job) / "record.json").exists():
            failed_record(w.job, "killed: bench run was interrupted (SIGINT/SIGTERM)", status="killed")
        w.conn.close()


def with_suppressed(fn, *args) -> None:
    try:
        fn(*args)
    except (ProcessLookupError, OSError):
        pass


def run_jobs(jobs: Iterable[CaseJob], on_result: Callable[[dict], None], workers: int, threads: int,
             pool: list[CaseWorker] | None = None) -> None:
    """Run ``jobs`` on ``workers`` case workers (``pool``, if already started); ``on_result(record)``
    in the driver as each ends. Jobs are taken from the iterable only when a worker is free (queued
    cases never start early). The workers are closed at the end."""
    pool = pool or [CaseWorker(threads) for _ in range(workers)]
    pending = iter(jobs)
    exhausted = False
    try:
        while True:
            for w in pool:
                if w.job is None and not exhausted:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                    else:
                        w.submit(job)
            busy = [w for w in pool if w.job is not None]
            if not busy:
                break
            lefts = [s for s in (w.seconds_left() for w in busy) if s is not None]
            wait([x for w in busy for x in w.waitables()], timeout=max(0.01, min([1.0, *lefts])))
            for w in busy:
                record = w.collect()
                if record is not None:
                    on_result(record)
    except BaseException:
        stop(pool)
        raise
    for w in pool:
        w.close()
