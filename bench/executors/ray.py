"""Ray tasks: ``--executor ray`` (local ``ray.init()``) or ``--ray-address auto|ray://host:port``.

Workers compute and return records; only the driver writes MLflow. The store must be on storage
every node mounts (see docs/scaling.md)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..errors import UserError
from ..runner import CaseJob, run_case


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
            ray.init(**kwargs)
        try:
            remote = ray.remote(num_cpus=1)(run_case)
            from .process import distinct_training_first

            jobs = distinct_training_first(list(jobs))
            for job in jobs:
                job.settings.quiet = True
                job.settings.threads = job.settings.threads or 1
            refs = {remote.remote(job): job for job in jobs}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        on_result(ray.get(ref))
                    except Exception as exc:  # worker died
                        from .process import _failed

                        on_result(_failed(refs[ref], f"ray task failed: {type(exc).__name__}: {exc}"))
        finally:
            if started_here:
                ray.shutdown()
