"""Test-set likelihood in bits per dim (``bpd``) or nats per dim (``nll``), via the family.

The family declares ``likelihood_methods: dict[method, "continuous" | "discrete"]`` (first = default)
and ``log_likelihood(x, rng, method=..., **opts) -> LikelihoodResult`` (``nll`` in nats per sample,
``nfe``). For a test image with integer levels k in {0..L-1} (D dims):

- continuous method: dequantise ``y = (k + u) / L`` (``bench.likelihood.dequantize``; u ~ U[0,1)^D
  from per-sample streams, or u = 1/2 with ``dequantization: midpoint``), map to model space
  ``x = 2 y - 1`` and convert the model-space NLL with ``bench.likelihood.bits_per_dim`` (log-scale
  ln 2 per dim):  bpd = (nll - D ln 2 + D ln L) / (D ln 2);
- discrete method: pass the quantised image ``x = 2 k / (L - 1) - 1``; bpd = nll / (D ln 2)
  (``bench.likelihood.discrete_bits_per_dim``);
- continuous data (points, ``levels`` None): the NLL of x as given, in nats per dim, nll / D.

The ``nll`` metric reports nats per dim of the same quantity (bpd * ln 2 for quantised data).
Logged (metric ``bpd``): ``bpd`` (or ``nll`` for continuous data), its standard error ``*_sem`` and
the 95% normal interval ``*_ci_lo``/``*_ci_hi`` = mean -/+ 1.96 sem (a mean of independent per-sample
values; :func:`bench_metrics.bootstrap.normal_interval`),
``bpd_nfe`` (mean NFE of one ``log_likelihood`` call on a batch), ``bpd_num_samples`` and any
``LikelihoodResult.extra`` values as ``bpd_<name>``; the method, kind and options go to the case
log and to ``artifacts/bpd.json``. Test images: a fixed subset of ``num_samples`` (same for every
case), in batches of ``batch_size``; further parameters are passed to ``log_likelihood``.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.context import MetricSkipped
from bench.store import content_key
from bench.errors import UserError
from bench.likelihood import bits_per_dim, dequantize, discrete_bits_per_dim, quantize, unit_to_model
from bench.rng import PerSampleRNG, derive_seed

from .bootstrap import normal_interval


def subset_indices(n_total: int, n: int | None, split: str) -> torch.Tensor:
    """A fixed subset of row indices (independent of the case seed)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(derive_seed("bench_metrics", "likelihood-subset", split, n_total))
    return torch.randperm(n_total, generator=gen)[:n]


def model_inputs(x: torch.Tensor, kind: str, levels: int | None, u: torch.Tensor | None) -> torch.Tensor:
    """What the family's ``log_likelihood`` receives for test data ``x`` (model space)."""
    if levels is None:
        return x
    if kind == "continuous":
        y = dequantize(x, levels, u)
        return unit_to_model(y)[0]
    return quantize(x, levels)


def per_sample_values(nll: torch.Tensor, kind: str, dim: int, levels: int | None) -> torch.Tensor:
    """bits per dim (quantised data) or nats per dim (continuous data) of each sample."""
    nll = nll.detach().to(torch.float64).reshape(-1)
    if levels is None:
        return nll / dim
    if kind == "continuous":
        return bits_per_dim(nll, dim, levels, math.log(2.0))  # x = 2 y - 1: log|a| = ln 2 per dim
    return discrete_bits_per_dim(nll, dim)


class BitsPerDim:
    """Metric ``bpd`` (see the module docstring)."""

    key = "bpd"

    def __init__(self, method: str | None = None, num_samples: Annotated[int, Field(gt=0)] | None = 1000,
                 batch_size: Annotated[int, Field(gt=0)] = 200, split: Literal["train", "test"] = "test",
                 dequantization: Literal["uniform", "midpoint"] = "uniform", **options: Any):
        self.method, self.num_samples, self.batch_size = method, num_samples, batch_size
        self.split, self.dequantization, self.options = split, dequantization, options

    def _method(self, family) -> tuple[str | None, str | None]:
        if not hasattr(family, "log_likelihood"):
            raise MetricSkipped("the family has no log_likelihood")
        methods = dict(getattr(family, "likelihood_methods", None) or {})
        method = self.method or (next(iter(methods)) if methods else None)
        if methods and method not in methods:
            raise UserError(f"likelihood method '{method}' is not provided by the family",
                            hint=f"methods: {', '.join(methods)}")
        kind = methods.get(method)
        if kind not in (None, "continuous", "discrete"):
            raise ValueError(f"likelihood method '{method}' has kind {kind!r} (want continuous or discrete)")
        return method, kind

    def evaluate(self, ctx) -> dict[str, Any]:
        """Per-sample values (bpd or nats/dim), mean NFE and extras."""
        method, kind = self._method(ctx.family)
        info = ctx.data
        data = ctx.dataset.split(self.split)
        idx = subset_indices(len(data), self.num_samples, self.split)
        values, nfes, extras, kinds = [], [], {}, set()
        for lo in range(0, len(idx), self.batch_size):
            rows = idx[lo:lo + self.batch_size].tolist()
            x = data[rows]
            u = None
            if info.levels is not None and kind != "discrete":
                u = (PerSampleRNG.for_indices(ctx.seed, rows, stream="dequantization").rand(*x.shape[1:])
                     if self.dequantization == "uniform" else torch.full_like(x, 0.5))
            res = ctx.family.log_likelihood(model_inputs(x, kind or "continuous", info.levels, u),
                                            PerSampleRNG.for_indices(ctx.seed, rows, stream="likelihood"),
                                            method=method, **self.options)
            if kind is not None and res.kind != kind:
                raise ValueError(f"log_likelihood(method={method!r}) returned kind {res.kind!r}, but "
                                 f"likelihood_methods says {kind!r}")
            if kind is None and res.kind == "discrete" and info.levels is not None:
                raise ValueError("the family returned a discrete likelihood without declaring likelihood_methods; "
                                 "declare it so that the metric passes quantised data")
            kinds.add(res.kind)
            values.append(per_sample_values(torch.as_tensor(res.nll), res.kind, info.dim, info.levels))
            nfes.append(float(res.nfe))
            for k, v in (res.extra or {}).items():
                extras.setdefault(k, []).append(float(v))
        v = torch.cat(values)
        if not torch.isfinite(v).all():
            raise ValueError(f"log_likelihood returned non-finite NLL for {int((~torch.isfinite(v)).sum())} samples")
        return {"values": v, "nfe": sum(nfes) / len(nfes), "method": method, "kind": kinds.pop(),
                "extra": {k: sum(e) / len(e) for k, e in extras.items()}}

    def _cache_key(self, ctx) -> str | None:
        """The likelihood depends on the trained model and this metric's settings, not on the
        sampler: cases that share a model (same dataset, family, training and seed) share it."""
        cfg = getattr(ctx, "case_config", None) or {}
        if not cfg.get("family"):
            return None
        model = {k: cfg.get(k) for k in ("dataset", "family", "train", "seed")}
        # "vlb-decoder-v2": values cached before the VLB decoder fix (v_1 = sigma_1^2 / alpha_1^2) are not reused
        return content_key("likelihood", "vlb-decoder-v2", model, self.key, self.method, self.num_samples, self.batch_size,
                           self.split, self.dequantization, self.options)

    def compute(self, ctx) -> dict[str, float]:
        key = self._cache_key(ctx)
        entry = ctx.store.get("likelihood", key) if key else None
        if entry is not None:
            values = json.loads((entry / "values.json").read_text())
            ctx.log(f"{self.key}: the model's likelihood was measured by an earlier case; loaded from the store")
            return {**values, **self.interval(values), f"{self.key}_cached": 1.0}
        values = self._compute(ctx)
        if key:
            ctx.store.put("likelihood", key, lambda d: (d / "values.json").write_text(json.dumps(values)),
                          meta={"metric": self.key})
        return {**values, **self.interval(values), f"{self.key}_cached": 0.0}

    def interval(self, values: dict[str, float]) -> dict[str, float]:
        """``<name>_ci_lo``/``_ci_hi`` from ``<name>`` (``bpd``, or ``nll`` for continuous data) and
        ``<name>_sem`` (also for values stored before intervals were logged)."""
        name = self.key if self.key in values else "nll"
        return normal_interval(name, values[name], values[f"{name}_sem"])

    def _compute(self, ctx) -> dict[str, float]:
        out = self.evaluate(ctx)
        v, levels = out["values"], ctx.data.levels
        name = self.key if levels is not None else "nll"
        scale = 1.0 if (self.key == "bpd" or levels is None) else math.log(2.0)
        v = v * scale
        values = {name: float(v.mean()), f"{name}_sem": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0,
                  f"{self.key}_nfe": out["nfe"], f"{self.key}_num_samples": float(len(v)),
                  **{f"{self.key}_{k}": x for k, x in out["extra"].items()}}
        record = {"method": out["method"], "kind": out["kind"], "levels": levels, "dim": ctx.data.dim,
                  "dequantization": self.dequantization if levels is not None and out["kind"] == "continuous" else None,
                  "split": self.split, "options": self.options, "values": values}
        ctx.log(f"{self.key}: method {out['method']} ({out['kind']}), {len(v)} {self.split} samples, "
                f"{name} = {values[name]:.4f} +- {values[name + '_sem']:.4f}, NFE {out['nfe']:.1f}")
        (ctx.artifact_dir / f"{self.key}.json").write_text(json.dumps(record, indent=1, default=str))
        return values


class NegLogLikelihood(BitsPerDim):
    """Metric ``nll``: nats per dim (bpd * ln 2 for quantised data)."""

    key = "nll"
