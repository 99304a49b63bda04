"""The core's executors, registered through the same hook as any plugin's."""
from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def bench_register_executors(register):
    register("local", "bench.executors.local:LocalExecutor",
             description="run cases one after another in one watched worker process")
    register("process", "bench.executors.process:ProcessExecutor",
             description="a pool of worker processes (--workers N; default as many as fit: workers x threads <= cores)")
    register("ray", "bench.executors.ray:RayExecutor",
             description="Ray tasks on a local or remote cluster (pip install -e .[ray])")
