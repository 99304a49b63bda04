"""Schedules: endpoints against the reference values (ddpm-basics.md 6.2 items 2, 3, 5;
diffusion-math.md section 9 item 11), continuous forms, respacing, sigma_max from the data."""
import math

import numpy as np
import pytest
import torch

from bench_diffusion.noise import Dense, Isotropic
from bench_diffusion.processes import VPProcess
from bench_diffusion.schedules import Cosine, Geometric, Karras, Linear, Quadratic, Sigmoid, respace
from bench_diffusion.testing import build, dataset




def test_linear_endpoints():
    b = Linear().betas(1000)
    assert b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15
    ab = np.cumprod(1 - b)
    assert abs(ab[0] - 0.9999) < 1e-15
    assert abs(ab[-1] - 4.03583e-5) < 1e-9
    snr = ab / (1 - ab)
    assert abs(math.log(snr[0]) - 9.210) < 1e-3 and abs(math.log(snr[-1]) + 10.118) < 1e-3
    bt = (1 - np.concatenate([[1.0], ab[:-1]])) / (1 - ab) * b           # beta-tilde_t
    assert bt[0] == 0.0 and abs(bt[1] - 5.4532e-5) < 1e-9 and abs(bt[-1] / b[-1] - 0.999999) < 1e-6
    assert (bt <= b).all()
    # improved-diffusion's rescaling keeps beta_T * T / 1000 fixed
    assert abs(Linear().betas(100)[-1] - 0.2) < 1e-15 and abs(Linear().betas(4000)[0] - 2.5e-5) < 1e-18


def test_cosine_endpoints():
    c = Cosine()
    b = c.betas(1000)
    assert abs(math.cos(0.008 / 1.008 * math.pi / 2) ** 2 - 0.9998446) < 1e-7
    assert abs(b[0] - 4.1284e-5) < 1e-9
    ab = np.cumprod(1 - b)
    assert abs(ab[0] - 0.99995872) < 1e-8 and abs(ab[499] - 0.493844) < 1e-6 and abs(b[499] - 3.1459e-3) < 1e-7
    i = np.arange(1000.0)
    raw = 1 - c._f((i + 1) / 1000) / c._f(i / 1000)
    assert abs(raw[998] - 0.749999) < 1e-6 and abs(raw[999] - 1.0) < 1e-12
    assert (b >= 0.999).sum() == 1 and b[-1] == 0.999                      # exactly one beta clipped, t = T
    assert abs(ab[-1] - 2.43e-9) < 1e-11
    f = c._f(i[1:] / 1000) / c._f(0.0)
    np.testing.assert_allclose(ab[:-1], f, rtol=1e-10)
    assert c.betas(10).max() <= 0.999 and c.betas(37).max() <= 0.999


@pytest.mark.parametrize("sched", [Linear(), Quadratic(), Sigmoid(), Cosine()])
def test_continuous_forms_and_derivatives(sched):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    fd = (sched.log_alpha_bar(t + h) - sched.log_alpha_bar(t - h)) / (2 * h)
    torch.testing.assert_close(sched.dlog_alpha_bar(t), fd, rtol=1e-6, atol=1e-6)
    assert abs(float(sched.log_alpha_bar(torch.tensor(0.0, dtype=torch.float64)))) < 1e-12
    if not isinstance(sched, Cosine):  # beta(t) / 1000 is the discrete beta at t_i = i / (T - 1)
        T = 1000
        ti = torch.arange(T, dtype=torch.float64) / (T - 1)
        np.testing.assert_allclose((-sched.dlog_alpha_bar(ti) / 1000).numpy(), sched.betas(T), rtol=1e-12)


def test_continuous_linear_matches_discrete_alpha_bar():
    """exp(-int beta) (beta_min = 0.1, beta_max = 20) tracks the discrete product within about 7% at
    T = 1000 (the gap is mostly sum beta^2 / 2 ~ 0.067 in log alpha_bar at t = 1)."""
    s = Linear()
    ab = s.alpha_bars(1000)
    cont = torch.exp(s.log_alpha_bar(torch.arange(1, 1001, dtype=torch.float64) / 1000)).numpy()
    rel = np.abs(cont / ab - 1)
    assert rel.max() < 0.071 and rel[:500].max() < 0.01
    assert abs(float(s.log_alpha_bar(torch.tensor(1.0, dtype=torch.float64))) + (0.1 + 19.9 / 2)) < 1e-12


def test_discrete_vp_process_interpolates_the_table_exactly():
    for sched in (Linear(), Cosine()):
        p = VPProcess(sched, Isotropic((2,)), (2,), T=1000)
        a, s = p.alpha_sigma(p.grid)
        ab = sched.alpha_bars(1000)
        np.testing.assert_allclose((a ** 2).numpy(), ab, rtol=1e-12)
        np.testing.assert_allclose((s ** 2).numpy(), 1 - ab, rtol=1e-9)
        tt = torch.linspace(0.0005, 1.0, 4001, dtype=torch.float64)
        lab = p.log_alpha_bar(tt)
        assert (lab[1:] <= lab[:-1] + 1e-15).all()                          # monotone (PCHIP)
        assert (p.dlog_alpha_bar(tt) <= 1e-12).all()
        pc = p.posterior(p.grid[1], p.grid[0])                               # t = 2 -> 1 (1-based)
        assert abs(pc.var - (1 - ab[0]) / (1 - ab[1]) * (1 - ab[1] / ab[0])) < 1e-15


def test_respacing_conventions():
    np.testing.assert_array_equal(respace(1000, 10, "leading"), np.arange(901, 0, -100))
    np.testing.assert_array_equal(respace(1000, 10, "trailing"), np.arange(1000, 0, -100))
    np.testing.assert_array_equal(respace(1000, 10, "linspace"),
                                  [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1])
    np.testing.assert_array_equal(respace(10, 10, "leading"), np.arange(10, 0, -1))
    for sp in ("leading", "trailing", "linspace"):
        r = respace(1000, 37, sp)
        assert len(r) == 37 and (np.diff(r) < 0).all() and r.min() >= 1 and r.max() <= 1000
    with pytest.raises(ValueError, match="respace"):
        respace(10, 11, "leading")
    with pytest.raises(ValueError, match="spacing"):
        respace(10, 5, "uniform")
    # respaced betas reproduce alpha_bar on the sub-grid (section 9 item 11)
    p = VPProcess(Linear(), Isotropic((1,)), (1,), T=1000)
    ts = p.sampling_times(50, "trailing")
    ab = Linear().alpha_bars(1000)
    prod = 1.0
    for t, s in zip(ts[::-1][1:], ts[::-1][:-1]):
        prod *= 1 - p.posterior(t, s).var_ts
    first = 1 - p.posterior(ts[-1], None).var_ts
    assert abs(first * prod - ab[999]) < 1e-12


def test_geometric_and_karras():
    g = Geometric(0.01, 50.0)
    assert abs(g.ratio(232) - 1.03756) < 1e-5
    assert abs(Geometric(0.01, 20.0).ratio(207) - 1.03759) < 1e-5
    s = g.sigmas(232)
    assert abs(s[0] - 0.01) < 1e-15 and abs(s[-1] - 50) < 1e-10
    np.testing.assert_allclose(s[1:] / s[:-1], g.ratio(232), rtol=1e-12)
    k = Karras(0.002, 80.0, 7.0)
    ramp = np.linspace(0, 1, 18)  # k-diffusion's get_sigmas_karras, decreasing
    want = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(k.sigmas(18)[::-1], want, rtol=1e-12)
    t = torch.linspace(0.01, 0.99, 20, dtype=torch.float64)
    for sch in (g, k):
        fd = (sch.log_sigma(t + 1e-6) - sch.log_sigma(t - 1e-6)) / 2e-6
        torch.testing.assert_close(sch.dlog_sigma(t), fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(RuntimeError, match="fitted"):
        Geometric(0.01, "auto").sigmas(10)


def test_sigma_max_auto_is_the_max_whitened_pairwise_distance():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 2.0]])
    noise = Dense((3,), cov)
    g = Geometric(0.01, "auto")
    g.fit(x, noise)
    li = np.linalg.cholesky(np.linalg.inv(cov))  # ||L^T d|| = sqrt(d^T Sigma^-1 d): independent whitening
    xn = x.numpy()
    brute = max(math.sqrt((xn[i] - xn[j]) @ np.linalg.inv(cov) @ (xn[i] - xn[j]))
                for i in range(300) for j in range(i))
    assert abs(g.sigma_max - brute) < 1e-9
    assert abs(g.sigma_max - np.max(np.linalg.norm((xn[:, None] - xn[None]) @ li, axis=-1))) < 1e-9


def test_schedule_factories_validate():
    data = dataset("gaussian", dim=2, n_train=50, n_test=10)
    assert build("schedule", {"name": "linear"}, data).beta_max == 0.02
    with pytest.raises(Exception):
        build("schedule", {"name": "linear", "beta_max": 1.5}, data)
    with pytest.raises(Exception):
        build("schedule", {"name": "geometric", "sigma_max": -1.0}, data)
    with pytest.raises(Exception):
        build("schedule", {"name": "cosine", "s": -0.1}, data)
    with pytest.raises(ValueError, match="VP schedule"):
        build("family", {"name": "ddpm", "schedule": "geometric", "network": "mlp"}, data)
