"""Where a case's samples go, chunk by chunk, as they are drawn (or read back from a saved file).

Each chunk (float32, CPU, model space; ``eval.batch_size`` samples) is checked for non-finite values
and then, in order: kept when a metric needs the whole tensor (``hold``), or only its first rows for
the sample grid (``head``); appended to ``samples.npz`` (:mod:`bench.samplefile`); and fed to every
streaming metric's ``accumulate(ctx, chunk, start)`` (:class:`bench.context.MetricContext`), timed as
that metric's time. Memory is one chunk plus what the metrics accumulate (e.g. features), unless
``hold``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .context import MetricSkipped
from .errors import CaseFailed


@dataclass
class SampleSink:
    hold: bool
    head: int = 0
    writer: Any = None
    #: (metric name, metric, its MetricContext) of the metrics with ``accumulate``
    streaming: list[tuple[str, Any, Any]] = field(default_factory=list)
    timed: Callable[[str], Any] | None = None  # phase timer: ``timed(name)`` is a context manager
    on_skip: Callable[[str, str], None] = lambda name, reason: None
    count: int = 0
    bad: int = 0
    _held: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, x: torch.Tensor) -> None:
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        self.bad += bad
        if not self.bad:
            self._keep(x)
            if self.writer is not None:
                self.writer.append(x)
            for item in list(self.streaming):
                name, metric, mctx = item
                try:
                    with self.timed(f"metric:{name}"):
                        metric.accumulate(mctx, x, self.count)
                except MetricSkipped as exc:
                    self.streaming.remove(item)
                    self.on_skip(name, str(exc) or "not applicable")
        self.count += len(x)

    def _keep(self, x: torch.Tensor) -> None:
        if self.hold:
            self._held.append(x)
        elif self.count < self.head:
            self._held.append(x[:self.head - self.count])

    def finish(self) -> None:
        """Fail the case if any sample was not finite (after all were drawn, to count them)."""
        if self.bad:
            raise CaseFailed(f"sampler produced non-finite values in {self.bad} of {self.count} samples")

    def samples(self) -> torch.Tensor | None:
        """All samples when held, else None."""
        return torch.cat(self._held) if self.hold and self._held else None

    def first(self) -> torch.Tensor | None:
        """The first samples (all when held, else the first ``head``), for the grid."""
        return torch.cat(self._held) if self._held else None
