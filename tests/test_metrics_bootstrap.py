"""Bootstrap intervals of the sample-based metrics: each replicate formula against the metric's own
estimator on explicitly resampled rows (and against torch-fidelity / scipy), coverage by simulation
against closed forms, the cached features (no extra extractor call), the logged keys and bpd's
normal interval."""
import math

import pytest
import torch

from bench.protocols import DataInfo
from bench_metrics import bootstrap as bs
from bench_metrics import fidelity
from bench_metrics.fidelity import FID, KID, PRC, fid_from_features, kid_from_features, prc_from_features
from bench_metrics.kernels import MMD, Energy, distances, energy_distance, mmd2_unbiased, rbf_kernels
from bench_metrics.likelihood import BitsPerDim
from bench_metrics.moments import Moments, moments
from bench_metrics.swd import SlicedWasserstein, random_directions, sliced_wasserstein, swd_replicates
from bench_metrics.testing import metric_context


def gen(seed):
    return torch.Generator().manual_seed(seed)


def identity(n):
    return bs.Resamples(torch.arange(n)[None], torch.ones(1, n, dtype=torch.float64))


def one(r, i):
    return bs.Resamples(r.idx[i:i + 1], r.counts[i:i + 1])


# ------------------------------------------------------------------ replicate formulas = the estimators
def test_counts_agree_with_the_indices():
    r = bs.resamples(50, 7, gen(0))
    assert torch.equal(r.counts.sum(1), torch.full((7,), 50.0))
    for i in range(7):
        assert torch.equal(r.counts[i], torch.bincount(r.idx[i], minlength=50).double())


@pytest.mark.parametrize("d,n,m", [(3, 40, 60), (30, 12, 9)])  # feature path, Gram path (d > n, m)
def test_frechet_replicates_are_the_fid_of_the_resampled_rows(d, n, m):
    g = gen(d)
    x, y = torch.randn(n, d, generator=g, dtype=torch.float64), 0.3 + 1.5 * torch.randn(m, d, generator=g, dtype=torch.float64)
    assert float(bs.frechet_replicates(x, y, identity(n), identity(m))) == pytest.approx(fid_from_features(x, y), rel=1e-7)
    rx, ry = bs.draw(4, n, m, tag="t")
    reps = bs.frechet_replicates(x, y, rx, ry)
    for i in range(4):
        assert float(reps[i]) == pytest.approx(fid_from_features(x[rx.idx[i]], y[ry.idx[i]]), rel=1e-6, abs=1e-9)


def test_u_statistic_replicates_leave_out_pairs_of_copies():
    g = gen(1)
    x, y = torch.randn(30, 2, generator=g, dtype=torch.float64), torch.randn(25, 2, generator=g, dtype=torch.float64) + 0.4
    assert float(bs.mmd2_replicates(*rbf_kernels(x, y, 1.3), identity(30), identity(25))) == pytest.approx(
        mmd2_unbiased(x, y, 1.3), rel=1e-12)
    assert float(bs.energy_replicates(*distances(x, y), identity(30), identity(25))) == pytest.approx(
        energy_distance(x, y), rel=1e-12)
    rx, ry = bs.draw(3, 30, 25, tag="u")
    dxx, dyy, dxy = distances(x, y)
    for i in range(3):  # brute force: the mean over pairs of positions whose original rows differ
        ix, iy = rx.idx[i], ry.idx[i]
        within = [dxx[ix][:, ix][ix[:, None] != ix[None, :]].mean(), dyy[iy][:, iy][iy[:, None] != iy[None, :]].mean()]
        brute = 2 * dxy[ix][:, iy].mean() - within[0] - within[1]
        assert float(bs.energy_replicates(dxx, dyy, dxy, one(rx, i), one(ry, i))) == pytest.approx(float(brute), rel=1e-12)


def test_kid_replicate_is_the_full_set_unbiased_mmd_with_kids_kernel():
    g = gen(2)
    a, b = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.2
    kernels = (bs.kid_kernel(a, a), bs.kid_kernel(b, b), bs.kid_kernel(a, b))
    # subsets of the full size: every subset is the whole set, so torch-fidelity's KID is the full-set value
    assert float(bs.mmd2_replicates(*kernels, identity(40), identity(40))) == pytest.approx(
        kid_from_features(a, b, subsets=3, subset_size=40)[0], rel=1e-5)


@pytest.mark.parametrize("n,m", [(40, 40), (30, 70), (90, 20)])
def test_swd_replicates_are_the_swd_of_the_resampled_rows(n, m):
    g = gen(n + m)
    x, y = torch.randn(n, 3, generator=g, dtype=torch.float64), 1.2 * torch.randn(m, 3, generator=g, dtype=torch.float64)
    dirs = random_directions(3, 16, 0)
    rx, ry = bs.draw(4, n, m, tag="s")
    for p in (2.0, 1.0):  # p = 2: reweighting the sorted projections; p != 2: sorting each resample
        from bench_metrics.swd import w2sq_weighted  # the reweighting itself, in float64: exact
        sx, sy = torch.sort(x @ dirs.T, 0).values.T, torch.sort(y @ dirs.T, 0).values.T
        assert torch.allclose(w2sq_weighted(sx, torch.ones_like(sx), sy, torch.ones_like(sy)).mean().sqrt(),
                              torch.tensor(sliced_wasserstein(x, y, dirs), dtype=torch.float64), rtol=1e-12)
        reps = swd_replicates(x @ dirs.T, y @ dirs.T, rx, ry, p)
        for i in range(4):
            tol = 1e-5 if p == 2.0 else 1e-10  # p = 2 runs in float32
            assert float(reps[i]) == pytest.approx(sliced_wasserstein(x[rx.idx[i]], y[ry.idx[i]], dirs, p), rel=tol)


def test_prc_replicates_match_torch_fidelity_and_reweight_the_indicators():
    g = gen(3)
    a, b = torch.randn(60, 4, generator=g), torch.randn(50, 4, generator=g) + 0.5
    reps = bs.prc_replicates(a, b, identity(60), identity(50), 3)
    ref = prc_from_features(a, b, 3)
    assert float(reps["precision"]) == pytest.approx(ref["precision"], abs=1e-6)
    assert float(reps["recall"]) == pytest.approx(ref["recall"], abs=1e-6)
    assert float(reps["f_score"]) == pytest.approx(ref["f_score"], abs=1e-6)
    rg, rr = bs.draw(2, 60, 50, tag="p")
    inside = bs.inside_balls(a, b, 3)
    assert float(bs.prc_replicates(a, b, one(rg, 1), one(rr, 1), 3)["precision"]) == pytest.approx(
        float(inside[rg.idx[1]].mean()))


def test_moment_error_replicates_are_the_errors_of_the_resampled_rows():
    g = gen(4)
    x = torch.randn(80, 3, generator=g, dtype=torch.float64) * 1.1
    mu, cov = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    (r,) = bs.draw(3, 80, tag="m")
    mean_err, cov_err = bs.moment_errors(x, r.counts, mu, cov)
    for i in range(3):
        ref = moments(x[r.idx[i]].numpy(), mu.numpy(), cov.numpy())
        assert float(mean_err[i]) == pytest.approx(ref["mean_err"], rel=1e-10)
        assert float(cov_err[i]) == pytest.approx(ref["cov_err"], rel=1e-10)


def test_percentile_interval_recentred_on_the_estimate():
    reps = torch.arange(201, dtype=torch.float64)  # mean 100
    lo, hi = bs.percentile_interval(reps)
    assert lo == pytest.approx(5.0) and hi == pytest.approx(195.0)
    lo, hi = bs.percentile_interval(reps, 90.0)  # bootstrap bias b = 10
    assert lo == pytest.approx(-5.0) and hi == pytest.approx(185.0)


# ------------------------------------------------------------------ coverage by simulation
def test_energy_interval_covers_the_closed_form_in_95_percent_of_400_repetitions():
    """X ~ N(0, 1), Y ~ N(d, 1): E|X - Y| = E|Z|, Z ~ N(d, 2), E|X - X'| = 2 / sqrt(pi); the
    U-statistic is unbiased, so the (plain percentile) interval should cover the population value.
    (Resampling only the generated set covers in 83.5% of these draws; 2000 draws give 93.8%.)"""
    d = 0.5
    e_abs = 2 / math.sqrt(math.pi) * math.exp(-d * d / 4) + d * math.erf(d / 2)
    truth = 2 * e_abs - 4 / math.sqrt(math.pi)
    g, hits = gen(10), 0
    for _ in range(400):
        x = torch.randn(200, 1, generator=g, dtype=torch.float64)
        y = d + torch.randn(200, 1, generator=g, dtype=torch.float64)
        lo, hi = bs.percentile_interval(bs.energy_replicates(*distances(x, y), bs.resamples(200, 200, g),
                                                             bs.resamples(200, 200, g)))
        hits += lo <= truth <= hi
    assert 0.93 <= hits / 400 <= 0.97, hits / 400


def test_frechet_interval_covers_the_estimators_expectation_in_95_percent_of_400_repetitions():
    """1-D Gaussians N(0, 1) and N(d, 1), n = m = 200: the Frechet distance of the fits is
    (m_1 - m_2)^2 + (s_1 - s_2)^2 with E = d^2 + 2 / n + 2 (1 - c4^2), c4 = E[s] (the unbiased
    sample variance's square root: c4 = sqrt(2 / (n - 1)) Gamma(n / 2) / Gamma((n - 1) / 2)). The
    estimator is biased (E - d^2 = 0.015, 0.15 of its standard deviation); the interval claims the
    estimator's expectation E, and is tested on it."""
    d, n = 0.5, 200
    c4 = math.sqrt(2 / (n - 1)) * math.exp(math.lgamma(n / 2) - math.lgamma((n - 1) / 2))
    expectation = d * d + 2 / n + 2 * (1 - c4 * c4)
    g, hits = gen(11), 0
    for _ in range(400):
        x = torch.randn(n, 1, generator=g, dtype=torch.float64)
        y = d + torch.randn(n, 1, generator=g, dtype=torch.float64)
        estimate = float((x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2)  # the 1-D Frechet distance
        lo, hi = bs.percentile_interval(bs.frechet_replicates(x, y, bs.resamples(n, 200, g), bs.resamples(n, 200, g)),
                                        estimate)
        hits += lo <= expectation <= hi
    assert 0.93 <= hits / 400 <= 0.97, hits / 400


# ------------------------------------------------------------------ through the metrics
class Points:
    def __init__(self, dim=2, n=400, params=None):
        self.info = DataInfo("pts", (dim,), "points", params=params or {})
        self._s = {s: torch.randn(n, dim, generator=gen(i)) for i, s in enumerate(("train", "test"))}

    def split(self, name):
        return self._s[name]


@pytest.mark.parametrize("metric,keys", [
    (SlicedWasserstein(num_projections=32), ["swd"]),
    (MMD(), ["mmd"]),
    (Energy(), ["energy"]),
])
def test_distance_metrics_log_their_interval_and_resample_count(metric, keys):
    data = Points()
    ctx = metric_context(data, data.split("train")[:150] + 0.3)
    out = metric.compute(ctx)
    for k in keys:
        assert out[f"{k}_ci_lo"] < out[k] < out[f"{k}_ci_hi"]
    assert out[f"{metric.key}_boot_n"] == float(metric.bootstrap) > 0  # its default
    metric.bootstrap = 0
    off = metric.compute(ctx)
    assert not any("_ci_" in k or "_boot_n" in k for k in off)
    assert {k: v for k, v in out.items() if "_ci_" not in k and "_boot_n" not in k} == off  # values unchanged


def test_moments_logs_intervals_of_its_errors():
    data = Points(params={"kind": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 0.0], [0.0, 1.0]]})
    out = Moments(bootstrap=100).compute(metric_context(data, data.split("test") * 1.2))
    for k in ("moments_mean_err", "moments_cov_err"):
        assert out[f"{k}_ci_lo"] <= out[k] <= out[f"{k}_ci_hi"]
    assert out["moments_boot_n"] == 100.0 and out["moments_cov_err_ci_lo"] > 0.2  # a 44% variance excess


class Images:
    def __init__(self, n=300):
        self.info = DataInfo("imgs", (1, 4, 4), "image", levels=256, value_range=(-1.0, 1.0))
        self._s = {s: torch.rand(n, 1, 4, 4, generator=gen(20 + i)) * 2 - 1 for i, s in enumerate(("train", "test"))}

    def split(self, name):
        return self._s[name]


def test_fidelity_intervals_use_the_cached_features(tmp_path, monkeypatch):
    calls = []
    real = fidelity.extract_features

    def counting(ext, images, batch_size):
        calls.append(len(images))
        return real(ext, images, batch_size)

    monkeypatch.setattr(fidelity, "extract_features", counting)
    data = Images()
    samples = data.split("train")[:120].clamp(-0.8, 0.8)
    results = {}
    for boot in (0, 200):
        fidelity._GEN_CACHE.clear()
        calls.clear()
        ctx = metric_context(data, samples, store=tmp_path / f"store{boot}")
        out = {}
        for cls in (FID, KID, PRC):
            out.update(cls(extractor="random-proj", bootstrap=boot, context=ctx.build_context).compute(ctx))
        results[boot] = (out, list(calls))
    on, off = results[200][0], results[0][0]
    # reference, floor, generated: once each (in calls of whole extractor batches, bench_metrics.stream)
    assert results[200][1] == results[0][1] and sum(results[0][1]) == 300 + 120 + 120
    for k in ("fid", "kid", "prc_precision", "prc_recall", "prc_f_score"):
        assert on[f"{k}_ci_lo"] <= on[k] <= on[f"{k}_ci_hi"] and f"{k}_ci_lo" not in off
    assert on["fid_boot_n"] == on["kid_boot_n"] == on["prc_boot_n"] == 200.0
    assert {k: v for k, v in on.items() if "_ci_" not in k and "_boot_n" not in k} == off


class Constant:
    """A model whose per-sample NLL is known: 0, 1, 2, ... nats (continuous points)."""

    provides = frozenset({"likelihood"})
    likelihood_methods = {"exact": "continuous"}

    def log_likelihood(self, x, rng, method=None, **opts):
        from bench.protocols import LikelihoodResult

        return LikelihoodResult(x[:, 0].abs().to(torch.float64), "continuous", method, nfe=1.0)


def test_bpd_logs_mean_plus_minus_196_sem():
    data = Points(dim=1, n=500)
    out = BitsPerDim(num_samples=None).compute(metric_context(data, family=Constant()))
    v = data.split("test")[:, 0].abs().double()
    sem = float(v.std() / math.sqrt(len(v)))
    assert out["nll"] == pytest.approx(float(v.mean())) and out["nll_sem"] == pytest.approx(sem)
    assert out["nll_ci_lo"] == pytest.approx(float(v.mean()) - 1.959964 * sem)
    assert out["nll_ci_hi"] == pytest.approx(float(v.mean()) + 1.959964 * sem)


def test_a_bootstrap_beyond_the_operation_limit_is_skipped_and_said(monkeypatch):
    monkeypatch.setattr(bs, "MAX_OPERATIONS", 1e3)
    data, lines = Points(), []
    out = SlicedWasserstein(num_projections=8).compute(metric_context(data, data.split("train")[:50], log=lines.append))
    assert "swd" in out and "swd_ci_lo" not in out and "swd_boot_n" not in out
    assert any("swd: no bootstrap interval" in line for line in lines)
