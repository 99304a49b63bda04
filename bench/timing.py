"""Phase timers, the NFE counter and peak memory (DESIGN.md section 7)."""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from typing import Callable, Iterable, Iterator

import torch

from .device import synchronize


class PhaseTimer:
    """Wall-clock seconds per named phase (train, sample, metric:NAME, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class NFECounter:
    """Counts forward calls of the given modules (a call on a batch counts once).

    Attach with ``with counter.attached(modules):``; ``counter.calls`` is the running total.
    ``limit`` (max NFE per batch) raises through ``on_exceed`` when exceeded.
    """

    def __init__(self, limit: float | None = None, on_exceed: Callable[[int], None] | None = None):
        self.calls = 0
        self.limit = limit
        self.on_exceed = on_exceed
        self._batch_start = 0

    def new_batch(self) -> None:
        self._batch_start = self.calls

    def _hook(self, module, args) -> None:
        self.calls += 1
        if self.limit is not None and self.calls - self._batch_start > self.limit and self.on_exceed:
            self.on_exceed(self.calls - self._batch_start)

    @contextlib.contextmanager
    def attached(self, modules: Iterable[torch.nn.Module]) -> Iterator["NFECounter"]:
        handles = [m.register_forward_pre_hook(self._hook) for m in modules]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


class DeviceClock:
    """Seconds of work queued on ``device`` between :meth:`start` and :meth:`stop`.

    On CUDA, device events recorded in the stream (``torch.cuda.Event(enable_timing=True)``), read
    after a synchronisation, so the time covers the kernels and not only their launch; elsewhere the
    wall clock, with the device synchronised (MPS) before each reading."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.cuda = torch.device(device).type == "cuda"
        self._start: object = None

    def start(self) -> None:
        synchronize(self.device)
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return self._start.elapsed_time(end) / 1000.0
        synchronize(self.device)
        return time.perf_counter() - self._start


def peak_gpu_mem_mb(device: str) -> float | None:
    """Peak memory allocated by torch on a CUDA ``device`` in MiB (``max_memory_allocated``); None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / (1024.0 * 1024.0)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024.0 if platform.system() == "Linux" else usage / (1024.0 * 1024.0)


def summarize(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range) of repeated measurements."""
    vals = sorted(values)
    if not vals:
        return {}
    q = statistics.quantiles(vals, n=4) if len(vals) >= 2 else [vals[0]] * 3
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "iqr": q[2] - q[0],
            "repeats": float(len(vals))}


def machine_fingerprint() -> dict[str, str]:
    """CPU model, cores, torch version and threads, for the ``bench.machine.*`` tags."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu or "unknown", "cores": str(os.cpu_count()), "torch": torch.__version__,
            "threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "platform": platform.platform(terse=True)}
