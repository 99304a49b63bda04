"""Forward processes, posteriors, parameterisations and the NI = isotropic reduction, against
Monte Carlo, numerical Bayes, closed forms and textbook DDPM (diffusion-math.md section 9 items 1-5, 9, 12)."""
import math

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov
from torch import nn

from bench.protocols import DataInfo
from bench.rng import BatchRNG, PerSampleRNG
from bench_diffusion.noise import GFF, Dense, Isotropic, dense_matrix
from bench_diffusion.processes import Process, VPProcess, make_process
from bench_diffusion.samplers.discrete import Ancestral
from bench_diffusion.samplers.langevin import CAS, langevin_step
from bench_diffusion.schedules import Geometric, Linear
from bench_diffusion.testing import build, context, dataset




class TinyNet(nn.Module):
    def __init__(self, in_shape, hidden=16, **_):
        super().__init__()
        d = int(np.prod(in_shape))
        self.shape = tuple(in_shape)
        self.a, self.b = nn.Linear(d + 1, hidden), nn.Linear(hidden, d)

    def forward(self, x, t):
        h = torch.cat([x.flatten(1), t[:, None] / 1000], 1)
        return self.b(torch.tanh(self.a(h))).reshape(len(x), *self.shape)


NETS = {"tiny": TinyNet}


@pytest.mark.parametrize("kind,noise", [("vp", "gff"), ("ve", "dense"), ("vp", "iso")])
def test_closed_form_marginal_equals_iterated_transitions(kind, noise):
    """Iterate x_i = a x_{i-1} + sqrt(var) sqrt(Sigma) z (6.2.1 / 6.3.4) and compare the first two
    moments with q(x_t | x_0) = N(alpha x_0, sigma^2 Sigma) (6.2.2 / 6.3.1) by Monte Carlo."""
    shape = (1, 4, 4) if noise == "gff" else (3,)
    nz = {"gff": lambda: GFF(shape, 1.0, 1.0), "iso": lambda: Isotropic(shape),
          "dense": lambda: Dense(shape, np.array([[1, .5, .2], [.5, 1, .3], [.2, .3, 1.]]))}[noise]()
    sched = Linear() if kind == "vp" else Geometric(0.05, 3.0)
    T = 1000 if kind == "vp" else 100
    p = make_process(kind, sched, nz, shape, T=T)
    n, steps = 12000, (150 if kind == "vp" else 60)
    rng = BatchRNG(0, n)
    x0 = torch.full((n, *shape), 0.7, dtype=torch.float64)
    x = x0.clone()
    if kind == "vp":
        betas = sched.betas(T)
        for i in range(steps):
            x = math.sqrt(1 - betas[i]) * x + math.sqrt(betas[i]) * nz.sqrt(rng.randn(*shape, dtype=torch.float64))
    else:
        sig = sched.sigmas(T)
        x = x + sig[0] * nz.sqrt(rng.randn(*shape, dtype=torch.float64))
        for i in range(1, steps):
            x = x + math.sqrt(sig[i] ** 2 - sig[i - 1] ** 2) * nz.sqrt(rng.randn(*shape, dtype=torch.float64))
    t = p.grid[steps - 1]
    a, s = (float(v) for v in p.alpha_sigma(t))
    flat = x.reshape(n, -1)
    sigma = dense_matrix(nz.cov, shape)
    se = s * s * math.sqrt(2.0 / n)  # standard error of a variance estimate
    assert (flat.mean(0) - a * 0.7).abs().max() < 5 * s / math.sqrt(n)
    assert (torch.cov(flat.T) - s * s * sigma).abs().max() < 6 * se
    # and q_sample draws the same law
    xq = p.q_sample(x0, torch.full((n,), float(t), dtype=torch.float64), rng.randn(*shape, dtype=torch.float64))
    assert (torch.cov(xq.reshape(n, -1).T) - s * s * sigma).abs().max() < 6 * se


def _numeric_posterior_1d(xt, x0, a_s, v_s, a_ts, v_ts):
    """Mean and variance of p(x_s | x_t, x_0) ~ N(x_s; a_s x0, v_s) N(x_t; a_ts x_s, v_ts) on a grid."""
    sd = math.sqrt(max(v_s, v_ts / a_ts ** 2))
    lo, hi = min(a_s * x0, xt / a_ts) - 12 * sd, max(a_s * x0, xt / a_ts) + 12 * sd
    grid = np.linspace(lo, hi, 2000001)
    logw = -0.5 * (grid - a_s * x0) ** 2 / v_s - 0.5 * (xt - a_ts * grid) ** 2 / v_ts
    w = np.exp(logw - logw.max())
    w /= w.sum()
    m = (w * grid).sum()
    return m, (w * (grid - m) ** 2).sum()


@pytest.mark.parametrize("kind,t_idx,s_idx", [("vp", 10, 9), ("vp", 700, 699), ("vp", 900, 500), ("ve", 40, 39),
                                              ("ve", 80, 20)])
def test_posterior_equals_numerical_bayes(kind, t_idx, s_idx):
    sched = Linear() if kind == "vp" else Geometric(0.01, 10.0)
    p = make_process(kind, sched, Isotropic((1,)), (1,), T=1000 if kind == "vp" else 100)
    t, s = p.grid[t_idx], p.grid[s_idx]
    if kind == "vp":  # independent of the process code: transitions from the beta table
        ab = sched.alpha_bars(1000)
        a_s, v_s = math.sqrt(ab[s_idx]), 1 - ab[s_idx]
        a_ts, v_ts = math.sqrt(ab[t_idx] / ab[s_idx]), 1 - ab[t_idx] / ab[s_idx]
        if t_idx == s_idx + 1:
            assert abs(v_ts - sched.betas(1000)[t_idx]) < 1e-12
    else:
        sig = sched.sigmas(100)
        a_s, v_s, a_ts, v_ts = 1.0, sig[s_idx] ** 2, 1.0, sig[t_idx] ** 2 - sig[s_idx] ** 2
    pc = p.posterior(t, s)
    for xt, x0 in ((0.3, -0.8), (1.7, 0.4)):
        m, v = _numeric_posterior_1d(xt, x0, a_s, v_s, a_ts, v_ts)
        assert abs(pc.c_xt * xt + pc.c_x0 * x0 - m) < 1e-6 * max(1, abs(m))
        assert abs(pc.var - v) < 1e-5 * v


def test_ni_posterior_matches_bishop_2_116():
    """Covariance beta-tilde Sigma and mean (6.2.17) from generic Gaussian conditioning with dense Sigma."""
    cov = np.array([[1.0, 0.6, 0.1], [0.6, 1.2, -0.3], [0.1, -0.3, 0.8]])
    p = VPProcess(Linear(), Dense((3,), cov), (3,), T=1000)
    ab = Linear().alpha_bars(1000)
    i, j = 400, 250
    lam = np.linalg.inv((1 - ab[j]) * cov)             # prior precision of x_s | x_0
    a = math.sqrt(ab[i] / ab[j])
    L = np.linalg.inv((1 - ab[i] / ab[j]) * cov)       # precision of x_t | x_s
    C = np.linalg.inv(lam + a * a * L)
    x0, xt = np.array([0.3, -1.0, 0.5]), np.array([0.1, 0.4, -0.2])
    mean = C @ (a * L @ xt + lam @ (math.sqrt(ab[j]) * x0))
    pc = p.posterior(p.grid[i], p.grid[j])
    np.testing.assert_allclose(pc.c_xt * xt + pc.c_x0 * x0, mean, atol=1e-12)
    np.testing.assert_allclose(pc.var * cov, C, atol=1e-12)


def _families(data, seed=0, **kw):
    out = []
    for name, noise in (("ddpm", "isotropic"), ("ni_ddpm", "isotropic")):
        torch.manual_seed(seed)
        out.append(build("family", {"name": name, "noise": noise, "network": {"name": "tiny"}, "T": 200, **kw},
                         data, networks=NETS))
    return out


def test_ni_ddpm_with_identity_noise_is_ddpm_bit_for_bit():
    data = dataset("gaussian", dim=3, n_train=256, n_test=16)
    x = data.split("train")[:64]
    for prediction in ("eps", "v"):
        ddpm, ni = _families(data, prediction=prediction)
        assert torch.equal(ddpm.loss(x, BatchRNG(1, 64)), ni.loss(x, BatchRNG(1, 64)))
        for spec in ({"name": "ancestral", "steps": 50}, {"name": "ddim", "steps": 20, "eta": 0.3},
                     {"name": "pf_ode", "method": "rk4", "steps": 5}, {"name": "euler_maruyama", "steps": 30}):
            smp = build("sampler", spec, data)
            with torch.no_grad():
                a = smp.sample(ddpm, PerSampleRNG.for_indices(0, range(32)))
                b = smp.sample(ni, PerSampleRNG.for_indices(0, range(32)))
            assert torch.equal(a, b), spec
    # the FFT code path with gamma = 0 (Sigma = I up to rounding) agrees to float32 precision
    img = dataset("gaussian_image", size=4, n_train=64, n_test=8)
    torch.manual_seed(0)
    iso = build("family", {"name": "ddpm", "network": {"name": "tiny"}, "T": 100}, img, networks=NETS)
    torch.manual_seed(0)
    g0 = build("family", {"name": "ni_ddpm", "noise": {"name": "gff", "gamma": 0.0}, "network": {"name": "tiny"},
                          "T": 100}, img, networks=NETS)
    smp = build("sampler", {"name": "ancestral", "steps": 100}, img)
    with torch.no_grad():
        a = smp.sample(iso, PerSampleRNG.for_indices(0, range(16)))
        b = smp.sample(g0, PerSampleRNG.for_indices(0, range(16)))
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_ancestral_equals_textbook_ddpm():
    """Ho et al.'s Algorithm 2 in its simplified form (2.4.27): x_{t-1} = (x_t - beta_t /
    sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta_t) + sqrt(beta-tilde) z, no noise at t = 1."""
    info = DataInfo("toy", (2,), "points")
    torch.manual_seed(0)
    fam = build("family", {"name": "ddpm", "network": {"name": "tiny"}, "T": 100}, info, networks=NETS).double()
    b = Linear().betas(100)
    ab = np.cumprod(1 - b)
    g = torch.Generator().manual_seed(4)

    class R:
        batch_size = 16

        def randn(self, *shape):
            return torch.randn((16, *shape), generator=g, dtype=torch.float64)

    ours = Ancestral(steps=100).sample(fam, R())
    g.manual_seed(4)
    x = torch.randn((16, 2), generator=g, dtype=torch.float64)
    for i in range(99, -1, -1):
        eps = fam.net(x, torch.full((16,), float(i + 1) * 10, dtype=torch.float32))  # the noise level 1000 t
        x = (x - b[i] / math.sqrt(1 - ab[i]) * eps) / math.sqrt(1 - b[i])
        if i > 0:
            x = x + math.sqrt((1 - ab[i - 1]) / (1 - ab[i]) * b[i]) * torch.randn((16, 2), generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours, x, atol=1e-10, rtol=1e-10)


def _oracle(data, process="vp", noise="gff", **kw):
    return build("family", {"name": "oracle", "process": process, "noise": noise, **kw}, data)


def test_oracle_score_and_tweedie_against_closed_form():
    """eps* and the score from the oracle equal the analytic ones for Gaussian data under GFF noise:
    s = grad log N(x; alpha m, alpha^2 S + sigma^2 Sigma) (autograd), E[x_0 | x_t] (Tweedie, with
    the 1/alpha of E5), and the thesis form without 1/alpha is alpha times it."""
    data = dataset("gaussian_image", size=4, n_train=200, n_test=10)
    fam = _oracle(data).double()
    m = torch.tensor(data.info.params["mean"], dtype=torch.float64)
    S = torch.tensor(data.info.params["cov"], dtype=torch.float64)
    sig = dense_matrix(fam.noise.cov, (1, 4, 4))
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for t in (0.05, 0.4, 0.9):
        a, s = (float(v) for v in fam.process.alpha_sigma(t))
        C = a * a * S + s * s * sig
        xr = x.reshape(5, -1).clone().requires_grad_(True)
        lp = torch.distributions.MultivariateNormal(a * m, covariance_matrix=C).log_prob(xr).sum()
        (score,) = torch.autograd.grad(lp, xr)
        torch.testing.assert_close(fam.score(x, t).reshape(5, -1), score, rtol=1e-8, atol=1e-8)
        x0 = fam.x0(x, t, fam.eps(x, t)).reshape(5, -1)
        post = m + (a * S @ torch.linalg.solve(C, (x.reshape(5, -1) - a * m).T)).T
        torch.testing.assert_close(x0, post, rtol=1e-8, atol=1e-8)
        thesis = x.reshape(5, -1) - s * fam.noise.sqrt(fam.eps(x, t)).reshape(5, -1)   # 2.4.43 / 6.2.32
        torch.testing.assert_close(thesis, a * post, rtol=1e-8, atol=1e-8)


def test_oracle_gmm_score_is_the_gradient_of_the_mixture_density():
    data = dataset("toy2d/8gaussians", n_train=100, n_test=10)
    fam = _oracle(data, process="ve", noise={"name": "anisotropic", "rho": 0.4},
                  schedule={"name": "geometric", "sigma_max": 8.0}).double()
    w, means, covs = fam.mixture
    sig = dense_matrix(fam.noise.cov, (2,))
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    for t in (0.1, 0.5):
        s = fam.process.sigma(t)
        xr = x.clone().requires_grad_(True)
        comps = [math.log(wk) + torch.distributions.MultivariateNormal(torch.tensor(mk), covariance_matrix=torch.tensor(ck)
                                                                          + s * s * sig).log_prob(xr)
                 for wk, mk, ck in zip(w, means, covs)]
        (score,) = torch.autograd.grad(torch.logsumexp(torch.stack(comps, 1), 1).sum(), xr)
        torch.testing.assert_close(fam.score(x, t), score, rtol=1e-8, atol=1e-9)


def test_loss_floor_of_the_oracle():
    """The oracle's eps loss at a fixed level equals tr(I - (1 - a_bar) sqrt(Sigma)^T C^-1 sqrt(Sigma)) / D
    (section 9 item 8), estimated over a large batch."""
    data = dataset("gaussian", dim=3, n_train=20000, n_test=10)
    fam = _oracle(data, noise={"name": "anisotropic", "rho": 0.5}, T=50)
    x = data.split("train").double()
    fam = fam.double()
    losses, floors = [], []
    S = torch.tensor(data.info.params["cov"], dtype=torch.float64)
    sig, root = dense_matrix(fam.noise.cov, (3,)), dense_matrix(fam.noise.sqrt, (3,))
    rng = BatchRNG(0, len(x))
    for t in fam.process.grid[[5, 30]]:
        eps = rng.randn(3, dtype=torch.float64)
        xt = fam.process.q_sample(x, float(t), eps)
        losses.append(float((fam.eps(xt, float(t)) - eps).pow(2).mean()))
        a, s = (float(v) for v in fam.process.alpha_sigma(t))
        C = a * a * S + s * s * sig
        floors.append(float(torch.trace(torch.eye(3) - s * s * root.T @ torch.linalg.solve(C, root)) / 3))
    np.testing.assert_allclose(losses, floors, rtol=0.03)


def test_langevin_step_is_preconditioned_e11():
    """The ALD step y <- y + a Sigma s + sqrt(2a) sqrt(Sigma) z with the exact score of
    N(m, V), V = S + sigma^2 Sigma, is the linear map y <- m + P (y - m) + noise, P = I - a Sigma V^-1:
    (1) five steps from N(m, I/4) move the empirical covariance exactly as P V P^T + 2 a Sigma predicts;
    (2) its stationary covariance (discrete Lyapunov, scipy) is V up to O(a); the printed thesis chain
    (no Sigma on the score, 6.3.13, P' = I - a V^-1) is far off (E11)."""
    data = dataset("gaussian_image", size=4, n_train=100, n_test=10, scale=0.3)
    fam = _oracle(data, process="ve", noise={"name": "gff", "gamma": 1.5}, schedule={"name": "geometric", "sigma_max": 5.0})
    S, m = np.array(data.info.params["cov"]), np.array(data.info.params["mean"])
    sig = dense_matrix(fam.noise.cov, (1, 4, 4)).numpy()
    t = 0.4
    s = fam.process.sigma(t)
    V = S + s * s * sig
    step = 0.05 * s * s
    P = np.eye(16) - step * sig @ np.linalg.inv(V)
    lyap = solve_discrete_lyapunov(P, 2 * step * sig)
    assert np.linalg.norm(lyap - V) / np.linalg.norm(V) < 0.03
    printed = solve_discrete_lyapunov(np.eye(16) - step * np.linalg.inv(V), 2 * step * sig)
    assert np.linalg.norm(printed - V) / np.linalg.norm(V) > 0.3
    # the implementation is that linear chain: propagate moments for a few large steps
    big = 2.0 * s * s
    P = np.eye(16) - big * sig @ np.linalg.inv(V)
    n = 20000
    rng = BatchRNG(3, n)
    y = (torch.tensor(m).reshape(1, 1, 4, 4) + 0.5 * rng.randn(1, 4, 4, dtype=torch.float64))
    cov, mean = 0.25 * np.eye(16), np.zeros(16)
    for _ in range(5):
        y = langevin_step(fam.double(), y, t, 1.0, s, big, rng)
        cov, mean = P @ cov @ P.T + 2 * big * sig, P @ mean
    flat = y.reshape(n, -1).numpy()
    emp = np.cov(flat.T)
    assert np.linalg.norm(emp - cov) / np.linalg.norm(cov) < 0.03
    assert np.abs(flat.mean(0) - m - mean).max() < 5 * math.sqrt(np.diag(cov).max() / n)
    P_printed = np.eye(16) - big * np.linalg.inv(V)
    cov_printed = 0.25 * np.eye(16)
    for _ in range(5):
        cov_printed = P_printed @ cov_printed @ P_printed.T + 2 * big * sig
    assert np.linalg.norm(emp - cov_printed) / np.linalg.norm(cov) > 0.2


def test_cas_keeps_the_noise_level_consistent():
    sig = list(np.geomspace(20.0, 0.01, 40))
    for eta in (0.2, 0.5, 1.0):
        betas = CAS.betas(sig, eta)
        for hi, lo, b in zip(sig[:-1], sig[1:], betas):
            assert abs((1 - eta) ** 2 * hi ** 2 + b ** 2 * lo ** 2 - lo ** 2) < 1e-9 * lo ** 2
    with pytest.raises(ValueError, match="outside"):
        CAS.betas([10.0, 1.0], 0.05)


def test_single_point_data_is_recovered_exactly():
    """For data concentrated at x*, DDIM (eta = 0) and ancestral sampling with the exact eps return x*
    (the last step's posterior mean is x0_hat = x*), for VP and through CAS's final denoising for VE."""
    xstar = [0.3, -1.2, 0.7]
    info = DataInfo("delta", (3,), "points", params={"kind": "gaussian", "mean": xstar, "cov": np.zeros((3, 3)).tolist()})
    ctx = context(info)
    vp = ctx.build("family", {"name": "oracle", "noise": {"name": "anisotropic", "rho": 0.3}})
    ve = ctx.build("family", {"name": "oracle", "process": "ve", "schedule": {"name": "geometric", "sigma_max": 5.0}})
    want = torch.tensor(xstar).expand(8, 3)
    for fam, spec in ((vp, {"name": "ddim", "steps": 10}), (vp, {"name": "ancestral", "steps": 20}),
                      (ve, {"name": "cas", "steps": 10}), (ve, {"name": "ald", "steps": 5})):
        out = ctx.build("sampler", spec).sample(fam, PerSampleRNG.for_indices(0, range(8)))
        torch.testing.assert_close(out, want, atol=2e-5, rtol=0)


def test_harmonic_mean_correction_recovers_the_single_point_score():
    """6.3.26-29: if the unconditional network outputs eps_theta(x) = (x - x0) / sigma_H (its optimum
    for one data point x0 when averaged uniformly over the levels), the corrected score at level
    sigma_i is the exact conditional score -(x - x0) / sigma_i^2; uncorrected it is -(x - x0) / (sigma_i sigma_H)."""
    x0 = torch.tensor([[0.5, -1.0]])

    class Optimum(nn.Module):
        def __init__(self, in_shape, **_):
            super().__init__()
            self.sigma_h = None

        def forward(self, x, t):
            assert torch.all(t == 0)  # the unconditional network sees no noise level
            return (x - x0) / self.sigma_h

    info = DataInfo("pt", (2,), "points")
    for hm in (True, False):
        fam = context(info, networks={"opt": Optimum}).build(
            "family", {"name": "smld", "L": 20, "conditional": False, "harmonic_mean": hm, "network": {"name": "opt"},
                       "schedule": {"name": "geometric", "sigma_max": 3.0}})
        sig = fam.process.table["sigmas"]
        fam.net.sigma_h = 1.0 / np.mean(1.0 / sig)
        assert abs(fam.sigma_h - fam.net.sigma_h) < 1e-12
        x = torch.tensor([[1.5, 0.2], [-0.3, 0.4]], dtype=torch.float64)
        for i in (0, 7, 19):
            t = float(fam.process.grid[i])
            want = -(x - x0) / sig[i] ** 2 if hm else -(x - x0) / (sig[i] * fam.net.sigma_h)
            torch.testing.assert_close(fam.score(x, t), want.to(torch.float64), rtol=1e-10, atol=1e-12)


class Interpolant(Process):
    """A new process as one subclass of ``Process``: alpha = 1 - t/2, sigma = t (a flow-matching-like
    path; not a shipped process), with f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2."""

    kind = "interp"
    schedule_type = object
    schedule_names = "any"

    def _build_grid(self, T):
        self.grid = torch.arange(1, T + 1, dtype=torch.float64) / T

    def default_t_min(self):
        return 1e-3

    def _alpha_sigma(self, t):
        return 1 - t / 2, t.clone()

    def f(self, t):
        return -0.5 / (1 - float(t) / 2)

    def g2(self, t):
        return 2 * float(t) - 2 * self.f(t) * float(t) ** 2

    def prior_scale(self, t):
        return self.sigma(t)


def test_a_new_process_is_one_subclass():
    """The base class derives posteriors, grids and the prior from the subclass's marginal: the
    posterior equals numerical Bayes, and ``Process`` itself and unknown kinds are refused."""
    p = Interpolant(None, Isotropic((1,)), (1,), T=50)
    ts = p.sampling_times(5)
    assert p.t_min == 1e-3 and len(ts) == 5 and ts[0] == 1.0 and all(a > b for a, b in zip(ts, ts[1:]))
    assert p.ode_times(4)[0] == 1.0 and p.ode_times(4)[-1] == 1e-3
    for t, s in ((0.9, 0.5), (0.3, 0.28)):
        a_s, v_s = 1 - s / 2, s * s
        a_ts = (1 - t / 2) / a_s
        v_ts = t * t - a_ts ** 2 * s * s
        pc = p.posterior(t, s)
        for xt, x0 in ((0.3, -0.8), (1.7, 0.4)):
            m, v = _numeric_posterior_1d(xt, x0, a_s, v_s, a_ts, v_ts)
            assert abs(pc.c_xt * xt + pc.c_x0 * x0 - m) < 1e-6 * max(1, abs(m))
            assert abs(pc.var - v) < 1e-5 * v
    assert p.posterior(0.4, None).c_x0 == pytest.approx(1.0) and p.posterior(0.4, None).var == 0.0
    with pytest.raises(TypeError, match="abstract"):
        Process(Linear(), Isotropic((1,)), (1,))
    with pytest.raises(ValueError, match="process kind must be one of 'vp', 've', got 'edm'"):
        make_process("edm", Linear(), Isotropic((1,)), (1,))
    with pytest.raises(ValueError, match="VP process needs a VP schedule"):
        make_process("vp", Geometric(0.01, 10.0), Isotropic((1,)), (1,))
