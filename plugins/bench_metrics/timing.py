"""Sampling throughput, measured like a benchmark (warm-up, repeats, median and spread).

``ctx.resample(n)`` draws ``n`` fresh samples with the case's sampler (its own random stream) and
returns the wall-clock seconds and the NFE per batch (network calls counted by forward hooks). For
each of ``repeats`` timed runs, after ``warmup`` untimed ones:

    samples_per_s = n / seconds
    ms_per_nfe    = 1000 * seconds / (nfe_per_batch * batches),   batches = ceil(n / eval.batch_size)

(ms per network call on one batch, the runner's definition). Logged: the median of each over the
repeats as ``samples_per_s`` and ``ms_per_nfe`` (these replace the runner's single-pass values of
the main sampling, which include warm-up effects; that pass stays in ``sample_time_s``), with
``samples_per_s_min``/``_max``/``_iqr``, ``ms_per_nfe_iqr``, ``timing_repeats``,
``timing_num_samples`` and ``timing_nfe`` (NFE per batch). Phase times (train, sample, metric:NAME)
are recorded by the runner; peak memory and the machine fingerprint too.
"""
from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from bench.timing import summarize


class Timing:
    """Metric ``timing``. ``num_samples`` per run (default: one eval batch), ``repeats``, ``warmup``."""

    def __init__(self, num_samples: Annotated[int, Field(gt=0)] | None = None,
                 repeats: Annotated[int, Field(gt=0)] = 5, warmup: Annotated[int, Field(ge=0)] = 1):
        self.num_samples, self.repeats, self.warmup = num_samples, repeats, warmup

    def compute(self, ctx) -> dict[str, float]:
        batch = int((ctx.case_config.get("eval") or {}).get("batch_size") or 0)
        n = self.num_samples or batch or 64
        batches = math.ceil(n / batch) if batch else 1
        for _ in range(self.warmup):
            ctx.resample(n)
        rates, ms_nfe, nfes = [], [], []
        for _ in range(self.repeats):
            out = ctx.resample(n)
            seconds = max(out.seconds, 1e-12)
            rates.append(len(out.samples) / seconds)
            nfes.append(float(out.nfe))
            if out.nfe:
                ms_nfe.append(1000.0 * seconds / (out.nfe * batches))
        r = summarize(rates)
        result = {"samples_per_s": r["median"], "samples_per_s_min": r["min"], "samples_per_s_max": r["max"],
                  "samples_per_s_iqr": r["iqr"], "timing_repeats": float(self.repeats),
                  "timing_num_samples": float(n), "timing_nfe": sorted(nfes)[len(nfes) // 2]}
        if ms_nfe:
            m = summarize(ms_nfe)
            result.update({"ms_per_nfe": m["median"], "ms_per_nfe_iqr": m["iqr"]})
        return result
