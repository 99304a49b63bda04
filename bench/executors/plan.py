"""How many case workers fit on this machine, and which executor ``bench run`` uses by default.

A case occupies ``resources.cpus`` cores if the suite says so, else its ``threads`` (torch intra-op
threads, part of the case's config: see :mod:`bench.device`). Workers are chosen so that
``workers x cpus <= cores``: several bench processes never ask torch for more threads than the
machine has, which is what made a quickstart 10x slower under load (issue 14, item 8).
"""
from __future__ import annotations

import os
from typing import Any


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it, e.g. under
    ``taskset`` or a container's cpuset), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def case_cpus(case: dict[str, Any]) -> int:
    """Cores one case occupies: ``resources.cpus``, else its ``threads`` (a case dict, ``Case.to_dict``)."""
    return int((case.get("resources") or {}).get("cpus") or case.get("threads") or 1)


def fitting_workers(cpus: int, cores: int | None = None) -> int:
    """Workers of ``cpus`` cores each that fit on the machine (at least one)."""
    return max(1, (cores or machine_cores()) // max(1, cpus))


def default_executor(trainings: int, cpus: int, gpus: int = 0, cores: int | None = None) -> str:
    """``process`` when the suite has several independent trainings (``trainings`` distinct training
    keys) and a pool fits two or more workers (``gpus`` pinned GPUs, else ``cores // cpus``), else
    ``local``. The numbers do not depend on the choice: every case runs on its own ``threads``."""
    workers = gpus or fitting_workers(cpus, cores)
    return "process" if trainings >= 2 and workers >= 2 else "local"
