"""Sliced Wasserstein distance (SWD) between generated samples and held-out data.

    SW_p(mu, nu) = ( E_theta [ W_p^p(theta # mu, theta # nu) ] )^(1/p),   theta ~ Uniform(S^(D-1)),

estimated with ``num_projections`` fixed random directions (seeded by ``seed``, not by the case, so
all cases of a suite use the same directions). The 1-D distance between two empirical measures of
sizes n and m is exact: with quantile functions F^-1 and G^-1 (step functions),

    W_p^p = integral_0^1 |F^-1(u) - G^-1(u)|^p du,

integrated piecewise over the union of the breakpoints {i/n} and {j/m}; for n = m it is the mean of
|x_(i) - y_(i)|^p over the sorted samples. Images are flattened in model space.

Logged: ``swd`` (generated vs reference), ``swd_floor`` (a real sample of the same size from the
other split vs the same reference, with the same directions), ``swd_num_samples``,
``swd_ref_num_samples``, ``swd_floor_num_samples``; with ``bootstrap`` B > 0 resamples, the 95%
percentile interval ``swd_ci_lo``/``swd_ci_hi`` over resamples of the generated and reference sets
(same directions; :mod:`bench_metrics.bootstrap`) and ``swd_boot_n`` = B.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from bench.rng import derive_seed

from . import bootstrap
from .common import flat64, generated, prefixed, real_sets


def random_directions(dim: int, num: int, seed: int) -> torch.Tensor:
    """``num`` directions uniform on the unit sphere in R^dim (float64, rows)."""
    gen = torch.Generator().manual_seed(derive_seed("bench_metrics", "swd-directions", dim, num, seed))
    v = torch.randn(num, dim, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def wasserstein_1d_pp(xs: torch.Tensor, ys: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """W_p^p between the empirical measures of each row of ``xs`` (L, n) and ``ys`` (L, m).

    Rows are sorted here. Exact for any n and m (piecewise integration of the quantile functions
    on the integer grid i*m, j*n over n*m, so no breakpoint is lost to rounding)."""
    xs, _ = torch.sort(xs, dim=1)
    ys, _ = torch.sort(ys, dim=1)
    n, m = xs.shape[1], ys.shape[1]
    if n == m:
        return (xs - ys).abs().pow(p).mean(dim=1)
    bx = torch.arange(1, n + 1, dtype=torch.int64) * m
    by = torch.arange(1, m + 1, dtype=torch.int64) * n
    ends = torch.unique(torch.cat([bx, by]))  # sorted, last = n*m
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    widths = (ends - starts).to(xs.dtype) / (n * m)
    # the quantile index on (start, end]: the step containing its left end
    ix = torch.div(starts, m, rounding_mode="floor").clamp(max=n - 1)
    iy = torch.div(starts, n, rounding_mode="floor").clamp(max=m - 1)
    return ((xs[:, ix] - ys[:, iy]).abs().pow(p) * widths).sum(dim=1)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, p: float = 2.0) -> float:
    """SW_p between the rows of ``x`` (n, D) and ``y`` (m, D) over the given unit ``directions`` (L, D)."""
    px = flat64(x) @ directions.T  # (n, L)
    py = flat64(y) @ directions.T
    return float(wasserstein_1d_pp(px.T, py.T, p).mean().pow(1.0 / p))


def w2sq_weighted(sx: torch.Tensor, cx: torch.Tensor, sy: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """W_2^2 between 1-D measures with sorted atoms ``sx`` (..., n), ``sy`` (..., m) and integer
    counts ``cx``, ``cy`` (summing to n and m; zeros allowed), without sorting:

        W_2^2 = sum_i cx_i sx_i^2 / n + sum_k cy_k sy_k^2 / m - 2 integral_0^1 F^-1(u) G^-1(u) du.

    The cross term is sum_k sy_k (H(U_k) - H(U_(k-1))) / n, with U_k = (cy_1 + ... + cy_k) n / m the
    breakpoints of G^-1 and H(u) = n integral_0^(u/n) F^-1, piecewise linear between the breakpoints
    v_i = cx_1 + ... + cx_i of F^-1 (found by ``searchsorted``): H(u) = H(v_(i-1)) + sx_i (u - v_(i-1))
    on (v_(i-1), v_i]. Only cumulative sums run over x: pass the larger set as x."""
    n, m = sx.shape[-1], sy.shape[-1]
    sx, sy = sx.expand_as(cx), sy.expand_as(cy)
    v = cx.cumsum(-1)
    cs = cx * sx
    h = cs.cumsum(-1)
    u = cy.cumsum(-1) * (n / m)
    i = torch.searchsorted(v, u).clamp(max=n - 1)
    ci, si = cx.gather(-1, i), sx.gather(-1, i)
    h_u = h.gather(-1, i) - ci * si + si * (u - (v.gather(-1, i) - ci))
    cross = (sy * torch.diff(h_u, dim=-1, prepend=torch.zeros_like(h_u[..., :1]))).sum(-1) / n
    return (cs * sx).sum(-1) / n + (cy * sy * sy).sum(-1) / m - 2 * cross


def swd_replicates(px: torch.Tensor, py: torch.Tensor, rx: bootstrap.Resamples, ry: bootstrap.Resamples,
                   p: float) -> torch.Tensor:
    """Bootstrap replicates of SW_p from the projections ``px`` (n, L) and ``py`` (m, L) of the two
    sets. A row drawn c times is an atom of weight c / n, so the 1-D distances stay exact. For p = 2
    the projections are centred, sorted once (float32) and each resample only reweights them
    (:func:`w2sq_weighted`);
    for other p each resample's projections are sorted (:func:`wasserstein_1d_pp`)."""
    n, num_dirs = px.shape
    m = py.shape[0]
    out = []
    if p == 2.0:  # float32 after centring (W_2 is shift-invariant): twice as fast, ~1e-6 relative error
        centre = torch.cat([px, py]).mean(0)
        sx, ox = torch.sort((px - centre).T.to(torch.float32), dim=1)
        sy, oy = torch.sort((py - centre).T.to(torch.float32), dim=1)
        big, small = ((sx, ox, rx), (sy, oy, ry)) if n >= m else ((sy, oy, ry), (sx, ox, rx))
        for s in bootstrap.chunks(len(rx), 4 * (n + m) * num_dirs):
            cb, cs = big[2].counts[s].to(torch.float32), small[2].counts[s].to(torch.float32)
            w = w2sq_weighted(big[0], cb[:, big[1]], small[0], cs[:, small[1]]).to(torch.float64)
            out.append(w.mean(1).clamp(min=0).sqrt())
        return torch.cat(out)
    for s in bootstrap.chunks(len(rx), (n + m) * num_dirs):
        xs = px[rx.idx[s]].transpose(1, 2).reshape(-1, n)   # (b * L, n)
        ys = py[ry.idx[s]].transpose(1, 2).reshape(-1, m)
        out.append(wasserstein_1d_pp(xs, ys, p).reshape(-1, num_dirs).mean(1).pow(1.0 / p))
    return torch.cat(out)


class SlicedWasserstein:
    """Metric ``swd``. Parameters: ``num_projections``, ``p``, ``num_samples`` (generated samples
    used, default all), ``reference_split`` (``test``), ``reference_num_samples`` (default all),
    ``seed`` (of the directions), ``key`` (metric key prefix, default ``swd``), ``bootstrap``
    (resamples of the interval, 0: none; 50 by default, not 200 as for the other metrics, because each
    SWD replicate reweights every projection of both sets: B L (n + m) operations)."""

    def __init__(self, num_projections: Annotated[int, Field(gt=0)] = 512,
                 p: Annotated[float, Field(ge=1)] = 2.0,
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] = "test",
                 reference_num_samples: Annotated[int, Field(gt=1)] | None = None,
                 seed: int = 0, key: str | None = None, bootstrap: Annotated[int, Field(ge=0)] = 50):
        self.num_projections, self.p, self.seed = num_projections, p, seed
        self.num_samples, self.reference_split = num_samples, reference_split
        self.reference_num_samples = reference_num_samples
        self.key = prefixed(key, "swd")
        self.bootstrap = bootstrap

    def compute(self, ctx) -> dict[str, float]:
        x = generated(ctx, self.num_samples)
        sets = real_sets(ctx.dataset, len(x), self.reference_split, self.reference_num_samples, ctx.log)
        dirs = random_directions(x[0].numel(), self.num_projections, self.seed)
        k = self.key
        out = {k: sliced_wasserstein(x, sets.reference, dirs, self.p),
               f"{k}_floor": sliced_wasserstein(sets.floor, sets.reference, dirs, self.p),
               f"{k}_num_samples": float(len(x)), **sets.counts(k)}
        ops = 10.0 * self.bootstrap * self.num_projections * (len(x) + len(sets.reference))
        if self.bootstrap and bootstrap.affordable(k, ops, ctx.log):
            px, py = flat64(x) @ dirs.T, flat64(sets.reference) @ dirs.T
            rx, ry = bootstrap.draw(self.bootstrap, len(px), len(py), tag=k)
            out.update(bootstrap.interval(k, swd_replicates(px, py, rx, ry, self.p), out[k]))
            out[f"{k}_boot_n"] = float(self.bootstrap)
        return out
