"""Ray tasks: ``--executor ray`` (local ``ray.init()``) or ``--ray-address auto|ray://host:port``.

Workers compute and return records; only the driver writes MLflow. The store and the results
directory must be on storage every node mounts (see docs/scaling.md).

Budgets: each task arms a watchdog thread that, past ``timeout_s`` + ``worker.grace_s``, writes the
case's "time budget exceeded" record and ends its worker process (Ray does not retry it). On
SIGINT/SIGTERM the driver force-cancels every task, records the cases that had started as killed,
and shuts down the Ray instance it started.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any, Callable, Iterable

from ..errors import UserError
from ..runner import CaseJob, run_case
from .plan import case_cpus
from .worker import _case_dir, failed_record, grace_s


def run_watched(job: CaseJob) -> dict:
    """``run_case`` with a watchdog that ends this process if the case outlasts its budget."""
    timeout = (job.case.get("budget") or {}).get("timeout_s")
    timer = None
    if timeout is not None:
        def expire() -> None:
            failed_record(job, f"BudgetExceeded: time budget exceeded: timeout_s={timeout:g} s, and the case did "
                               f"not return within {timeout + grace_s(timeout):g} s; its Ray worker was ended")
            os._exit(1)

        timer = threading.Timer(timeout + grace_s(timeout), expire)
        timer.daemon = True
        timer.start()
    try:
        return run_case(job)
    finally:
        if timer is not None:
            timer.cancel()


def task_options(job: CaseJob) -> dict[str, Any]:
    """Ray resources of one case: the suite's ``resources`` (``cpus`` -> ``num_cpus``, ``gpus`` ->
    ``num_gpus``); by default ``num_cpus`` is the case's ``threads`` and ``num_gpus`` is 1 when the
    case runs on CUDA, else 0. Ray then schedules it on a node with those free and sets the task's
    ``CUDA_VISIBLE_DEVICES``, so its ``cuda`` is that GPU."""
    on_cuda = str(job.case.get("device", "cpu")).startswith("cuda")
    gpus = (job.case.get("resources") or {}).get("gpus")
    return {"num_cpus": case_cpus(job.case), "num_gpus": (1 if on_cuda else 0) if gpus is None else gpus}


def _written_record(job: CaseJob) -> dict | None:
    path = _case_dir(job) / "record.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") not in (None, "running") else None


def _check_feasible(ray, jobs: list[CaseJob]) -> None:
    """A case that asks for more CPUs or GPUs than the whole cluster has would wait forever: a user error."""
    have = ray.cluster_resources()
    for key, want in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        need = max((task_options(job)[want] for job in jobs), default=0)
        if need > have.get(key, 0):
            raise UserError(f"a case asks Ray for {want}={need:g}, but the Ray cluster has {have.get(key, 0):g} "
                            f"{key}(s) in all", hint="lower resources.cpus/gpus or threads, or add nodes")


class RayExecutor:
    def __init__(self, workers: int | None = None, address: str | None = None, **_: Any):
        self.workers = workers
        self.address = address

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the ray executor needs Ray", hint="pip install -e .[ray]") from None
        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.workers:
                kwargs["num_cpus"] = self.workers
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            ray.init(**kwargs)
            for sig, handler in handlers.items():  # Ray's driver handlers abort on SIGTERM: keep bench's
                if handler is not None:
                    signal.signal(sig, handler)
        refs: dict = {}
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(run_watched)
            from .process import distinct_training_first

            jobs = distinct_training_first(list(jobs))
            _check_feasible(ray, jobs)
            for job in jobs:
                job.settings.quiet = True
            refs = {remote.options(**task_options(job)).remote(job): job for job in jobs}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        on_result(ray.get(ref))
                    except Exception as exc:  # the worker died: its watchdog's record, or a crash
                        job = refs.pop(ref)
                        on_result(_written_record(job) or failed_record(
                            job, f"ray task failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]))
                    else:
                        refs.pop(ref)
        except KeyboardInterrupt:
            for ref, job in refs.items():
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort, the shutdown below ends local workers
                    pass
                if _case_dir(job).exists() and _written_record(job) is None:  # started, not finished
                    failed_record(job, "killed: bench run was interrupted (SIGINT/SIGTERM)", status="killed")
            raise
        finally:
            if started_here:
                ray.shutdown()
