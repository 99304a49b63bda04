"""Bootstrap confidence intervals of the sample-based metrics, on the samples or features a metric
has already computed (no new sampling, no new feature extraction).

A resample of a set of n rows draws n row indices uniformly with replacement; it is written as a
count vector c (c_i = how many times row i was drawn, sum c = n), so that every statistic below is
a weighted sum evaluated for all B resamples at once with matrix products:

- mean and covariance:  m = c^T X / n,  S = (X^T diag(c) X - n m m^T) / (n - 1)   (the sample
  covariance of the resampled rows, ddof 1 as in ``numpy.cov``);
- Frechet distance:  |m_1 - m_2|^2 + tr S_1 + tr S_2 - 2 tr (S_1 S_2)^(1/2), with
  tr (S_1 S_2)^(1/2) = sum_k sqrt(lambda_k) over the eigenvalues of S_1^(1/2) S_2 S_1^(1/2) (a
  symmetric matrix with the spectrum of S_1 S_2; ``eigvalsh``). When the feature dimension d exceeds
  the set sizes the same eigenvalues are those of M M^T with the n x m matrix
  M = diag(c_1)^(1/2) (X - 1 m_1^T)(Y - 1 m_2^T)^T diag(c_2)^(1/2) / sqrt((n-1)(m-1)), built from the
  Gram matrix X Y^T computed once (``frechet_replicates`` picks the smaller problem);
- U-statistics (unbiased MMD^2, the energy distance's within-set terms): pairs of copies of the same
  original row are left out,  U = (c^T K c - sum_i c_i^2 K_ii) / (n^2 - sum_i c_i^2),  so that the
  replicates centre on the unbiased estimate rather than on its V-statistic (with c = 1 this is the
  usual sum_{i != j} K_ij / (n (n - 1))); cross terms are c_1^T K c_2 / (n m);
- sliced Wasserstein: the 1-D distances of the resampled projections (duplicates are atoms of
  weight c_i / n: the quantile functions stay exact).

Interval: the 95% **percentile** interval [q_2.5(T*), q_97.5(T*)] of the replicates T* (Efron and
Tibshirani, An Introduction to the Bootstrap, 1993, section 13.3), for the unbiased estimators (the
MMD^2, KID and energy U-statistics; precision and recall, means of indicators), whose replicates
centre on the estimate T. For the biased ones (FID, SWD, the moment errors) it is recentred on T:
[q_2.5(T*) - b, q_97.5(T*) - b], b = mean(T*) - T the bootstrap estimate of the bias (section 10.2).
Without the shift the interval sits about b above T (FID at d / n = 0.04 already puts it off centre);
with it, it covers the estimator's expectation E[T_n], which for a biased estimator is not the
population value. Chosen over BCa because BCa's acceleration needs a jackknife, n more
evaluations of the statistic, which for FID and precision/recall cost more than the bootstrap
itself. The resamples are seeded by the metric key and set sizes (the same for every case), so the
intervals are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from bench.rng import derive_seed

LEVEL = 0.95
#: resamples evaluated together (bounds the memory of the batched matrices)
CHUNK_ELEMENTS = 4_000_000
#: above this many arithmetic operations (a minute or more on a CPU) a metric logs no interval
MAX_OPERATIONS = 2e11


def affordable(key: str, operations: float, log) -> bool:
    """Whether a bootstrap of about ``operations`` multiply-adds is within MAX_OPERATIONS; if not,
    say so in the case log (the metric then logs no interval)."""
    if operations <= MAX_OPERATIONS:
        return True
    log(f"{key}: no bootstrap interval: about {operations:.1e} operations for these set sizes (limit "
        f"{MAX_OPERATIONS:.0e}); set bootstrap: 0 to silence this, or use fewer samples")
    return False


@dataclass
class Resamples:
    """B resamples of a set of n rows: row indices ``idx`` (B, n) and counts ``counts`` (B, n) float64."""

    idx: torch.Tensor
    counts: torch.Tensor

    def __len__(self) -> int:
        return self.idx.shape[0]


def resamples(n: int, num: int, gen: torch.Generator) -> Resamples:
    """``num`` resamples with replacement of ``n`` rows."""
    idx = torch.randint(n, (num, n), generator=gen)
    counts = torch.zeros(num, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(num, n, dtype=torch.float64))
    return Resamples(idx, counts)


def generator(*tag) -> torch.Generator:
    """A generator seeded by ``tag`` (metric key, set sizes), independent of the case seed."""
    return torch.Generator().manual_seed(derive_seed("bench_metrics", "bootstrap", *tag))


def draw(num: int, *sizes: int, tag: str = "") -> list[Resamples]:
    """Independent resamples of sets of the given ``sizes`` (one generator, seeded by tag and sizes)."""
    gen = generator(tag, *sizes)
    return [resamples(n, num, gen) for n in sizes]


def chunks(num: int, per_item: int) -> Iterator[slice]:
    """Slices of range(num) with at most CHUNK_ELEMENTS // per_item items each."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_item))
    for lo in range(0, num, step):
        yield slice(lo, min(num, lo + step))


def percentile_interval(replicates: torch.Tensor, estimate: float | None = None,
                        level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the (1 - level)/2 and (1 + level)/2 quantiles of the replicates (linear
    interpolation), shifted by -b, b = mean(replicates) - ``estimate`` (no shift without an estimate)."""
    r = replicates.detach().to(torch.float64).reshape(-1)
    a = (1.0 - level) / 2.0
    q = torch.quantile(r, torch.tensor([a, 1.0 - a], dtype=torch.float64))
    b = 0.0 if estimate is None else float(r.mean()) - estimate
    return float(q[0]) - b, float(q[1]) - b


def interval(key: str, replicates: torch.Tensor, estimate: float | None = None) -> dict[str, float]:
    """``{key}_ci_lo`` and ``{key}_ci_hi``: the 95% percentile interval of ``replicates`` (recentred
    on ``estimate`` if given: for biased estimators)."""
    lo, hi = percentile_interval(replicates, estimate)
    return {f"{key}_ci_lo": lo, f"{key}_ci_hi": hi}


def normal_interval(key: str, mean: float, sem: float) -> dict[str, float]:
    """``{key}_ci_lo``/``_hi`` = mean -/+ z sem, z = 1.959964 (the 97.5% normal quantile): the
    interval of a mean of many independent per-sample values (the central limit theorem)."""
    z = 1.959963984540054
    return {f"{key}_ci_lo": mean - z * sem, f"{key}_ci_hi": mean + z * sem}


# ---------------------------------------------------------------------------------- moments
def mean_cov(x: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per resample: mean (B, d) and sample covariance (B, d, d), ddof 1, of rows ``x`` (n, d) weighted by ``counts`` (B, n)."""
    n = x.shape[0]
    m = counts @ x / n
    second = torch.einsum("bn,nd,ne->bde", counts, x, x)
    cov = (second - n * m[:, :, None] * m[:, None, :]) / (n - 1)
    return m, cov


def moment_errors(x: torch.Tensor, counts: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicates of |m - mu| / sqrt(tr cov) and |S - cov|_F / |cov|_F (the ``moments`` errors)."""
    d = x.shape[1]
    mean_err, cov_err = [], []
    for s in chunks(len(counts), d * d + x.shape[0]):
        m, c = mean_cov(x, counts[s])
        mean_err.append((m - mu).norm(dim=1) / torch.sqrt(torch.trace(cov)))
        cov_err.append((c - cov).flatten(1).norm(dim=1) / cov.norm())
    return torch.cat(mean_err), torch.cat(cov_err)


# ---------------------------------------------------------------------------------- Frechet
def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh(s)
    return (v * lam.clamp(min=0).sqrt()[..., None, :]) @ v.transpose(-1, -2)


def _trace_sqrt_features(x, y, cx, cy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mx, sx = mean_cov(x, cx)
    my, sy = mean_cov(y, cy)
    r = _psd_sqrt(sx)
    lam = torch.linalg.eigvalsh(r @ sy @ r)
    tr_sqrt = lam.clamp(min=0).sqrt().sum(-1)
    return mx, my, sx.diagonal(dim1=-2, dim2=-1).sum(-1) + sy.diagonal(dim1=-2, dim2=-1).sum(-1), tr_sqrt


def _trace_sqrt_gram(x, y, gram, cx, cy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, m = x.shape[0], y.shape[0]
    mx, my = cx @ x / n, cy @ y / m
    sq_x, sq_y = (x * x).sum(1), (y * y).sum(1)
    traces = ((cx @ sq_x - n * (mx * mx).sum(1)) / (n - 1)) + ((cy @ sq_y - m * (my * my).sum(1)) / (m - 1))
    gc_y = cy @ gram.T / m                      # (B, n): x_i . m_y
    gc_x = cx @ gram / n                        # (B, m): m_x . y_j
    mm = (mx * my).sum(1)                       # (B,)
    centred = gram[None] - gc_y[:, :, None] - gc_x[:, None, :] + mm[:, None, None]
    mat = cx.sqrt()[:, :, None] * centred * cy.sqrt()[:, None, :] / math.sqrt((n - 1) * (m - 1))
    small = mat @ mat.transpose(1, 2) if n <= m else mat.transpose(1, 2) @ mat
    tr_sqrt = torch.linalg.eigvalsh(small).clamp(min=0).sqrt().sum(-1)
    return mx, my, traces, tr_sqrt


def frechet_replicates(x: torch.Tensor, y: torch.Tensor, rx: Resamples, ry: Resamples) -> torch.Tensor:
    """Replicates of the Frechet distance between the Gaussian fits of resampled ``x`` (n, d) and ``y`` (m, d)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    (n, d), m = x.shape, y.shape[0]
    gram_path = d > min(n, m)
    gram = x @ y.T if gram_path else None
    out = []
    per_item = n * m + min(n, m) ** 2 if gram_path else 4 * d * d
    for s in chunks(len(rx), per_item):
        if gram_path:
            mx, my, traces, tr_sqrt = _trace_sqrt_gram(x, y, gram, rx.counts[s], ry.counts[s])
        else:
            mx, my, traces, tr_sqrt = _trace_sqrt_features(x, y, rx.counts[s], ry.counts[s])
        out.append(((mx - my) ** 2).sum(1) + traces - 2 * tr_sqrt)
    return torch.cat(out)


# ---------------------------------------------------------------------------------- U-statistics
def within_u(k: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(c^T K c - sum c_i^2 K_ii) / (n^2 - sum c_i^2) per resample: the mean of K over pairs of distinct original rows."""
    n = k.shape[0]
    c2 = counts * counts
    num = ((counts @ k) * counts).sum(1) - c2 @ k.diagonal()
    return num / (n * n - c2.sum(1))


def cross_mean(k: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """c_x^T K c_y / (n m) per resample."""
    return ((cx @ k) * cy).sum(1) / (k.shape[0] * k.shape[1])


def mmd2_replicates(kxx, kyy, kxy, rx: Resamples, ry: Resamples) -> torch.Tensor:
    """Replicates of the unbiased MMD^2 = U_xx + U_yy - 2 mean K_xy."""
    return within_u(kxx, rx.counts) + within_u(kyy, ry.counts) - 2 * cross_mean(kxy, rx.counts, ry.counts)


def energy_replicates(dxx, dyy, dxy, rx: Resamples, ry: Resamples) -> torch.Tensor:
    """Replicates of 2 mean |X - Y| - U(|X - X'|) - U(|Y - Y'|) from the distance matrices."""
    return 2 * cross_mean(dxy, rx.counts, ry.counts) - within_u(dxx, rx.counts) - within_u(dyy, ry.counts)


def kid_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's cubic polynomial kernel (a . b / d + 1)^3 (float64)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a @ b.T / a.shape[1] + 1.0) ** 3


# ---------------------------------------------------------------------------------- precision / recall
def inside_balls(points: torch.Tensor, centres: torch.Tensor, neighborhood: int) -> torch.Tensor:
    """1.0 for each row of ``points`` inside some k-NN ball of ``centres`` (radius: distance of a
    centre to its k-th nearest other centre; torch-fidelity's ``calculate_precision_recall_full``)."""
    radii = torch.cdist(centres, centres).kthvalue(neighborhood + 1, dim=1).values
    return (torch.cdist(points, centres) <= radii[None, :]).any(dim=1).to(torch.float64)


def prc_replicates(gen: torch.Tensor, real: torch.Tensor, rg: Resamples, rr: Resamples, neighborhood: int
                   ) -> dict[str, torch.Tensor]:
    """Replicates of precision (the share of generated rows inside the real k-NN balls, over
    resampled generated rows), recall (the share of real rows inside the generated balls, over
    resampled real rows) and f = 2 P R / (P + R), *conditional on the balls*: the balls are those of
    the full sets, since a resample's duplicated rows would give zero k-NN radii. The interval
    therefore omits the variability of the balls and is narrower than an unconditional one."""
    prec = rg.counts @ inside_balls(gen, real, neighborhood) / gen.shape[0]
    rec = rr.counts @ inside_balls(real, gen, neighborhood) / real.shape[0]
    f = 2 * prec * rec / (prec + rec).clamp(min=1e-5)
    return {"precision": prec, "recall": rec, "f_score": f}
