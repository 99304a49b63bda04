"""Sequential, in-process execution (the default)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..runner import CaseJob, run_case


class LocalExecutor:
    def __init__(self, workers: int | None = None, **_: Any):
        self.workers = 1

    def run(self, jobs: Iterable[CaseJob], on_result: Callable[[dict], None]) -> None:
        for job in jobs:
            on_result(run_case(job))
