"""Features of images accumulated chunk by chunk, in bounded memory.

A :class:`FeatureStream` takes model-space images ``(n_i, C, H, W)`` chunk after chunk (from the
runner while it samples, from a held tensor, or from the rows of a real split), converts each chunk
to uint8 RGB (:func:`bench_metrics.extractor_base.to_uint8_rgb`, elementwise, so chunking changes no
value), and hands the extractor whole batches of ``batch_size`` images only, the remainder waiting
for the next chunk. The extractor therefore sees exactly the batches a single call on the whole set
would (torch-fidelity's loop cuts ``[0, b), [b, 2b), ...``), and the features are bit-identical to
the one-shot path. What is held: the features ``(N, d)``, at most one batch of waiting uint8 images
and one chunk in conversion; never the whole image set.

The content digest of the uint8 images (:func:`bench_metrics.common.tensor_digest`, the cache key
of reference statistics) is computed on the fly from the announced total, and equals the digest of
the whole uint8 tensor.
"""
from __future__ import annotations

from typing import Callable

import torch

from .common import Rows, digest_start
from .extractor_base import to_uint8_rgb

#: rows converted to uint8 at a time when a stream reads a held tensor or real rows
CONVERT_ROWS = 1024


class FeatureStream:
    """Features of ``total`` images fed in order by :meth:`update`; :meth:`finish` returns them.

    ``extract(u8)`` maps uint8 RGB ``(b, 3, H, W)`` (a multiple of ``batch_size`` rows, or the last
    remainder) to features ``(b, d)``; ``levels``/``quantize`` are the preprocessing's. Rows beyond
    ``total`` are ignored (a metric's ``num_samples`` cap), and so are rows already seen (several
    metrics may feed one shared stream the same chunk: ``start`` is the chunk's first row)."""

    def __init__(self, extract: Callable[[torch.Tensor], torch.Tensor], total: int, levels: int | None,
                 quantize: bool, batch_size: int, digest: bool = True):
        self.extract, self.total, self.levels, self.quantize = extract, total, levels, quantize
        self.batch_size = batch_size
        self.seen = 0
        self.pending: list[torch.Tensor] = []
        self.pending_rows = 0
        self.parts: list[torch.Tensor] = []
        self.hash = None
        self._digest_on = digest
        self.features: torch.Tensor | None = None

    def update(self, x: torch.Tensor, start: int | None = None) -> None:
        """Feed model-space images whose first row is row ``start`` of the set (default: the next)."""
        start = self.seen if start is None else start
        lo = self.seen - start
        if lo >= len(x) or self.seen >= self.total:
            return
        if lo < 0:
            raise ValueError(f"feature stream: rows {self.seen}..{start - 1} were never fed")
        x = x[lo:lo + self.total - self.seen]
        self.update_u8(to_uint8_rgb(x, self.levels, self.quantize))

    def update_u8(self, u8: torch.Tensor) -> None:
        """Feed uint8 RGB images directly (the next rows)."""
        if self.features is not None:
            raise RuntimeError("feature stream already finished")
        if self._digest_on:
            if self.hash is None:
                self.hash = digest_start(u8.dtype, (self.total, *u8.shape[1:]))
            self.hash.update(u8.contiguous().numpy().tobytes())
        self.seen += len(u8)
        self.pending.append(u8)
        self.pending_rows += len(u8)
        whole = self.pending_rows // self.batch_size * self.batch_size
        if whole:
            batch = torch.cat(self.pending)
            self.parts.append(self.extract(batch[:whole]))
            rest = batch[whole:]
            self.pending, self.pending_rows = ([rest.clone()] if len(rest) else []), len(rest)

    def finish(self) -> torch.Tensor:
        """The features ``(total, d)`` (idempotent); an error if fewer rows than announced came."""
        if self.features is None:
            if self.seen != self.total:
                raise ValueError(f"feature stream: {self.seen} rows fed, {self.total} announced")
            if self.pending_rows:
                self.parts.append(self.extract(torch.cat(self.pending)))
            self.pending, self.pending_rows = [], 0
            self.features = torch.cat(self.parts) if len(self.parts) != 1 else self.parts[0]
            self.parts = []
        return self.features

    @property
    def done(self) -> bool:
        return self.seen >= self.total

    def digest(self) -> str:
        """sha256 of the uint8 images fed, equal to ``tensor_digest`` of the whole uint8 tensor."""
        if self.hash is None:
            raise ValueError("feature stream: no digest (nothing fed, or digest=False)")
        return self.hash.hexdigest()


def feed(stream: FeatureStream, rows: Rows | torch.Tensor, chunk: int | None = None) -> FeatureStream:
    """Feed every row of a tensor or :class:`Rows` in chunks of ``chunk`` rows (:data:`CONVERT_ROWS`)."""
    rows = rows if isinstance(rows, Rows) else Rows(rows)
    chunk = chunk or CONVERT_ROWS
    for x in rows.chunks(chunk):
        stream.update_u8(to_uint8_rgb(x, stream.levels, stream.quantize))
    return stream


def uint8_digest(rows: Rows | torch.Tensor, levels: int | None, quantize: bool,
                 chunk: int | None = None) -> str:
    """``tensor_digest(to_uint8_rgb(rows))`` computed chunk by chunk (nothing extracted)."""
    rows = rows if isinstance(rows, Rows) else Rows(rows)
    chunk = chunk or CONVERT_ROWS
    h = None
    for x in rows.chunks(chunk):
        u8 = to_uint8_rgb(x, levels, quantize)
        h = h or digest_start(u8.dtype, (len(rows), *u8.shape[1:]))
        h.update(u8.contiguous().numpy().tobytes())
    if h is None:
        raise ValueError("no rows to digest")
    return h.hexdigest()
