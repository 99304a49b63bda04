"""Multistep samplers (dpmpp_2m, dpmpp_3m_sde, unipc, deis) against independent truths:

- side by side with diffusers' DPMSolverMultistepScheduler, UniPCMultistepScheduler and
  DEISMultistepScheduler (same betas, same timesteps, the same model function: the exact oracle);
- order of convergence on the exact-score oracle (Gaussian data), where the PF-ODE flow is known in
  closed form: the error at the last level falls like steps^-order (log-log slope);
- sample moments against the known target (isotropic and GFF noise), NFE = steps, per-sample seeds.
"""
import math

import numpy as np
import pytest
import torch

from bench.rng import BatchRNG, PerSampleRNG
from bench_diffusion.noise import dense_matrix
from bench_diffusion.samplers.multistep import DEIS, DPMSolverPP2M, DPMSolverPP3MSDE, Levels, UniPC, phi_integrals
from bench_diffusion.testing import build, count_network_calls, dataset, oracle_moments


# ---------------------------------------------------------------- side by side with diffusers

@pytest.fixture(scope="module")
def oracle3():
    data = dataset("gaussian", dim=3, n_train=10, n_test=10)
    return build("family", {"name": "oracle_vp", "T": 1000}, data)


def _diffusers_loop(ref, fam, x, last_sigma):
    """Run a diffusers scheduler with the oracle as its model, in float64 buffers (diffusers keeps
    its schedule in float32; the comparison is of the update formulas, not of float32 rounding)."""
    ab = torch.as_tensor(fam.process.table["alpha_bars"], dtype=torch.float64)
    ref.alphas_cumprod, ref.alpha_t, ref.sigma_t = ab, ab.sqrt(), (1 - ab).sqrt()
    ref.sigmas = torch.cat([((1 - ab) / ab).sqrt()[ref.timesteps], torch.tensor([last_sigma], dtype=torch.float64)])
    for k in ref.timesteps:  # diffusers' 0-based timestep k is bench's level k + 1, t = (k + 1) / T
        x = ref.step(fam.eps(x, (int(k) + 1) / 1000), k, x).prev_sample
    return x


def _start(n_steps, fam, spacing="trailing"):
    times = fam.process.sampling_times(n_steps, spacing)
    x = fam.process.prior_sample(BatchRNG(5, 64), times[0]).double()
    return times, x


@pytest.mark.parametrize("n", [8, 25])
def test_dpmpp_2m_matches_diffusers(oracle3, n):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=2,
                                                algorithm_type="dpmsolver++", timestep_spacing="trailing")
    ref.set_timesteps(n)
    times, x = _start(n, oracle3)
    np.testing.assert_array_equal(np.round(np.array(times) * 1000).astype(int) - 1, ref.timesteps.numpy())
    ours = DPMSolverPP2M(steps=n, spacing="trailing").solve(oracle3, x.clone(), times)
    theirs = _diffusers_loop(ref, oracle3, x.clone(), 0.0)
    torch.testing.assert_close(ours, theirs.double(), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("n,order", [(8, 2), (25, 2), (8, 3), (25, 3)])
def test_unipc_matches_diffusers(oracle3, n, order):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=order,
                                            solver_type="bh2", timestep_spacing="trailing")
    ref.set_timesteps(n)
    times, x = _start(n, oracle3)
    ours = UniPC(steps=n, spacing="trailing", order=order).solve(oracle3, x.clone(), times)
    theirs = _diffusers_loop(ref, oracle3, x.clone(), 0.0)
    torch.testing.assert_close(ours, theirs.double(), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("n,order", [(8, 2), (25, 2), (8, 3), (25, 3)])
def test_deis_matches_diffusers(oracle3, n, order):
    """diffusers' DEIS stops at the lowest training level (sigma_min) instead of the data: compare
    with ``final="level"`` over the same times plus that level. That appended step is 25x longer in
    lambda than the one before, so bench's ratio rule would take it at first order; diffusers only
    lowers the order on short grids (< 15 steps), so the long grid runs without lower_order_final."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DEISMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=order,
                                           timestep_spacing="trailing")
    ref.set_timesteps(n)
    times, x = _start(n, oracle3)
    a1, s1 = oracle3.process.alpha_sigma_floats(1 / 1000)
    ours = DEIS(steps=n, spacing="trailing", order=order, lower_order_final=n < 15).solve(oracle3, x.clone(), times + [1 / 1000], final="level")
    theirs = _diffusers_loop(ref, oracle3, x.clone(), s1 / a1)
    torch.testing.assert_close(ours, theirs.double(), rtol=2e-6, atol=2e-6)


# ---------------------------------------------------------------- order of convergence

class ExactFlow:
    """The PF-ODE flow of Gaussian data N(m, S) under x_t = alpha x_0 + sigma sqrt(Sigma) eps, in
    closed form: in whitened coordinates w = sqrt(Sigma)^-1 x, with B = sqrt(Sigma)^-1 S sqrt(Sigma)^-1
    = U diag(l) U^T and mu = sqrt(Sigma)^-1 m, the marginal is N(alpha mu, alpha^2 B + sigma^2 I) and the
    flow scales each eigen-coordinate of w - alpha mu by sqrt((alpha_1^2 l + sigma_1^2) / (alpha_0^2 l + sigma_0^2))."""

    def __init__(self, fam, data):
        shape = fam.shape
        self.proc, self.shape = fam.process, shape
        self.rs = dense_matrix(fam.noise.sqrt, shape).numpy()
        self.ri = dense_matrix(fam.noise.inv_sqrt, shape).numpy()
        m = np.array(data.info.params["mean"], np.float64).ravel()
        b = self.ri @ np.array(data.info.params["cov"], np.float64) @ self.ri.T
        self.lam, self.u = np.linalg.eigh(0.5 * (b + b.T))
        self.mu = self.ri @ m

    def __call__(self, x, t0, t1):
        a0, s0 = self.proc.alpha_sigma_floats(t0)
        a1, s1 = self.proc.alpha_sigma_floats(t1)
        y = (x.reshape(len(x), -1).numpy() @ self.ri.T - a0 * self.mu) @ self.u
        y = y * np.sqrt((a1 * a1 * self.lam + s1 * s1) / (a0 * a0 * self.lam + s0 * s0))
        return torch.from_numpy((y @ self.u.T + a1 * self.mu) @ self.rs.T).reshape(x.shape)


@pytest.fixture(scope="module", params=["isotropic", "gff"])
def flow_setting(request):
    if request.param == "gff":
        data = dataset("gaussian_image", size=4, n_train=10, n_test=10)
    else:
        data = dataset("gaussian", dim=4, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_vp", "T": None, "noise": request.param}, data)
    return fam, ExactFlow(fam, data)


T_END = 0.05
STEPS = (80, 160, 320, 640)
# (sampler, expected order): UniPC's corrector raises the order of UniP-p by one (Zhao et al. 2023).
ORDER_CASES = [
    (lambda: DPMSolverPP2M(), 2, STEPS),
    (lambda: DPMSolverPP3MSDE(eta=0.0, lower_order_final=False), 3, STEPS),
    (lambda: UniPC(order=2, lower_order_final=False), 3, STEPS),
    (lambda: UniPC(order=2, corrector=False, lower_order_final=False), 2, STEPS),
    (lambda: UniPC(order=3, lower_order_final=False), 4, (160, 320, 640, 1280)),  # pre-asymptotic below 160
    (lambda: DEIS(order=2, lower_order_final=False), 2, STEPS),
    (lambda: DEIS(order=3, lower_order_final=False), 3, STEPS),
]
ORDER_IDS = ["dpmpp_2m", "dpmpp_3m_ode", "unipc2", "unip2", "unipc3", "deis2", "deis3"]


def convergence_slope(make, fam, flow, steps=STEPS):
    """Least-squares slope of log(max_i |x_i - x_i*|) against log(steps), integrating the PF-ODE
    in float64 from t = 1 to T_END on a uniform time grid (``final="level"``)."""
    x0 = fam.process.prior_sample(BatchRNG(3, 64), 1.0).double()
    ref = flow(x0, 1.0, T_END)
    errs = []
    for n in steps:
        with torch.no_grad():
            x = make().solve(fam, x0.clone(), [float(t) for t in np.linspace(1.0, T_END, n + 1)], final="level")
        errs.append(float((x - ref).flatten(1).norm(dim=1).max()))
    return float(np.polyfit(np.log(steps), np.log(errs), 1)[0]), errs


@pytest.mark.parametrize("make,order,steps", ORDER_CASES, ids=ORDER_IDS)
def test_error_falls_at_the_rate_of_the_order(flow_setting, make, order, steps):
    """Slope within 0.3 of -order over 80..640 steps (160..1280 for UniPC-3; errors from ~1e-2 down
    to ~1e-8, far above float64 rounding); docs/diffusion.md states the measured slopes."""
    fam, flow = flow_setting
    slope, errs = convergence_slope(make, fam, flow, steps)
    assert abs(slope + order) < 0.3, f"slope {slope:.2f}, expected -{order}; errors {errs}"


def test_the_exact_flow_is_the_ode_solution(flow_setting):
    """The closed-form reference is itself checked: composing it over two intervals is the flow
    over their union, and one first-order step (DDIM) of size 1/2000 agrees with it to O(h^2)."""
    fam, flow = flow_setting
    x = fam.process.prior_sample(BatchRNG(1, 8), 1.0).double()
    torch.testing.assert_close(flow(flow(x, 1.0, 0.4), 0.4, 0.1), flow(x, 1.0, 0.1))
    x5 = flow(x, 1.0, 0.5)
    one = DPMSolverPP2M().solve(fam, x5.clone(), [0.5, 0.4995], final="level")
    assert float((one - flow(x5, 0.5, 0.4995)).abs().max()) < 1e-6


def test_phi_integrals_match_quadrature():
    from scipy.integrate import quad

    for h, c in [(0.03, 1.0), (0.7, 2.0), (2.5, 1.5)]:
        got = phi_integrals(h, c, 3)
        for k in range(3):
            want = quad(lambda u: c * math.exp(-c * (h - u)) * u ** k / math.factorial(k), 0, h, epsabs=1e-14)[0]
            assert abs(got[k] - want) < 1e-10 * max(1.0, abs(want)), (h, c, k)


# ---------------------------------------------------------------- moments, NFE, seeds

@pytest.fixture(scope="module", params=["iso", "gff"])
def moments(request):
    return oracle_moments("oracle_vp", request.param)


@pytest.mark.parametrize("spec", [
    {"name": "dpmpp_2m", "steps": 50}, {"name": "unipc", "steps": 50}, {"name": "unipc", "steps": 50, "order": 3},
    {"name": "deis", "steps": 50}, {"name": "dpmpp_3m_sde", "steps": 100},
], ids=["dpmpp_2m", "unipc2", "unipc3", "deis3", "dpmpp_3m_sde"])
def test_moments_on_the_oracle(moments, spec):
    """Mean within 5 standard errors, covariance (relative Frobenius) within 3x its Monte Carlo
    scale, for N samples from the sampler (N = 8000 in 4-d isotropic, 3000 in 16-d GFF)."""
    err_m, err_c = moments.errors(spec)
    assert err_m < 5 * moments.mean_se, f"mean error {err_m:.4f} (standard error {moments.mean_se:.4f})"
    assert err_c < 3 * moments.cov_se, f"covariance error {err_c:.4f} (Monte Carlo scale {moments.cov_se:.4f})"


def test_sde_noise_matters(moments):
    """dpmpp_3m_sde at eta = 1 is a different (stochastic) map from its eta = 0 ODE: samples differ,
    while both reach the target's moments at 100 steps."""
    ode = moments.errors({"name": "dpmpp_3m_sde", "steps": 100, "eta": 0.0})
    assert ode[0] < 5 * moments.mean_se and ode[1] < 3 * moments.cov_se
    a = build("sampler", {"name": "dpmpp_3m_sde", "steps": 20}, moments.data).sample(moments.fam, BatchRNG(2, 8))
    b = build("sampler", {"name": "dpmpp_3m_sde", "steps": 20, "eta": 0.0}, moments.data).sample(moments.fam, BatchRNG(2, 8))
    assert float((a - b).abs().max()) > 1e-2


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m_sde", "unipc", "deis"])
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_nfe_is_steps(moments, name, steps):
    smp = build("sampler", {"name": name, "steps": steps}, moments.data)
    nfe, x = count_network_calls(moments.fam, lambda: smp.sample(moments.fam, BatchRNG(0, 4)))
    assert nfe == steps and torch.isfinite(x).all() and x.dtype == torch.float32  # no silent float64
    r = smp.describe()["realised"]
    assert len(r["t"]) == steps and r["spacing"] == "leading"


def test_step_orders_and_last_step():
    """Warm-up from first order; on short grids (m < 15) the last two steps drop to orders 1 and 2
    (DPM-Solver, DEIS) or to min(p, m - j) (UniPC); the step to the data is always first order; a
    step more than twice as long in lambda as the one before is first order (lower_order_final)."""
    s3 = DPMSolverPP3MSDE()
    assert [s3.step_order(j, 10, False) for j in range(10)] == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert [s3.step_order(j, 20, True) for j in range(20)][-3:] == [3, 3, 1]
    assert [DEIS(order=2).step_order(j, 5, True) for j in range(5)] == [1, 2, 2, 2, 1]
    assert [UniPC(order=3).step_order(j, 20, True) for j in range(20)] == [1, 2] + [3] * 16 + [2, 1]
    assert [UniPC(order=3, lower_order_final=False).step_order(j, 6, False) for j in range(6)] == [1, 2, 3, 3, 3, 3]
    assert s3.step_order(10, 20, True, ratio=2.5) == UniPC(order=3).step_order(10, 20, True, ratio=2.5) == 1
    assert s3.step_order(10, 20, True, ratio=1.9) == 3
    assert DPMSolverPP3MSDE(lower_order_final=False).step_order(10, 20, True, ratio=4.0) == 3


def test_leading_grid_last_step_is_first_order():
    """On bench's leading grid the last step into t_min is 2.9x longer in lambda than the one before
    at 100 steps; taken at third order with SDE noise in the history it inflates the covariance
    (relative error 0.32 against 0.02 measured, 8000 samples): lower_order_final takes it at first
    order. Here: the sampler's realised orders on that grid."""
    data = dataset("gaussian", dim=2, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_vp"}, data)
    times = fam.process.sampling_times(100, "leading")
    lv = Levels(fam.process, times)
    orders = [DPMSolverPP3MSDE().step_order(j, 100, True, lv.ratio(j)) for j in range(99)]
    assert orders[:3] == [1, 2, 3] and orders[-1] == 1 and set(orders[2:-1]) == {3}


@pytest.mark.parametrize("name", ["dpmpp_3m_sde", "unipc"])
def test_samples_do_not_depend_on_the_batch(name):
    data = dataset("gaussian_image", size=4, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_vp", "noise": "gff"}, data)
    smp = build("sampler", {"name": name, "steps": 6}, data)
    whole = smp.sample(fam, PerSampleRNG.for_indices(7, range(6)))
    parts = torch.cat([smp.sample(fam, PerSampleRNG.for_indices(7, range(0, 2))),
                       smp.sample(fam, PerSampleRNG.for_indices(7, range(2, 6)))])
    torch.testing.assert_close(whole, parts, atol=1e-6, rtol=1e-6)


def test_bad_parameters_are_rejected():
    data = dataset("gaussian", dim=2, n_train=10, n_test=10)
    for spec in ({"name": "unipc", "order": 4}, {"name": "unipc", "variant": "bh3"},
                 {"name": "dpmpp_3m_sde", "eta": 1.5}, {"name": "deis", "steps": 0}):
        with pytest.raises(Exception):
            build("sampler", spec, data)


class DPMSolverCodeCoefficients(DPMSolverPP3MSDE):
    """The ODE third-order multistep update with the coefficients of DPM-Solver's and diffusers'
    code: second order in the midpoint form (1 - e^{-h}) (D_j + h f01 / 2), and the second divided
    difference weighted by J_2 instead of 2 J_2 (their ``- phi_3 D2`` with D2 = h^2 f012)."""

    def step(self, family, x, lv, j, hist, k, rng):
        h = lv.lam[j + 1] - lv.lam[j]
        jk = phi_integrals(h, 1.0, 3)
        drift = jk[0] * hist[0]
        if k >= 2:
            h1 = lv.lam[j] - lv.lam[j - 1]
            f01 = (hist[0] - hist[1]) / h1
            if k == 2:
                drift = drift + (jk[0] * h / 2) * f01
            else:
                h2 = lv.lam[j - 1] - lv.lam[j - 2]
                f012 = (f01 - (hist[1] - hist[2]) / h2) / (h1 + h2)
                drift = drift + jk[1] * (f01 + h1 * f012) + jk[2] * f012
        return (lv.sigma[j + 1] / lv.sigma[j]) * x + lv.alpha[j + 1] * drift


def test_diffusers_third_order_is_second_order(oracle3):
    """diffusers' DPM-Solver++(3M) (solver_order=3) equals :class:`DPMSolverCodeCoefficients` to float
    tolerance, and that update converges at order 2 on the closed-form flow (slope -1.88 measured),
    where bench's dpmpp_3m_sde at eta = 0 (D'' = 2 f012 integrated exactly) converges at order 3.
    This is why dpmpp_3m_sde is not compared with diffusers' third order."""
    diffusers = pytest.importorskip("diffusers")
    n = 25
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=3,
                                                algorithm_type="dpmsolver++", timestep_spacing="trailing")
    ref.set_timesteps(n)
    times, x = _start(n, oracle3)
    theirs = _diffusers_loop(ref, oracle3, x.clone(), 0.0).double()
    ours = DPMSolverCodeCoefficients(eta=0.0, lower_order_final=False).solve(oracle3, x.clone(), times)
    torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-6)
    data = dataset("gaussian", dim=4, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_vp", "T": None}, data)
    slope, _ = convergence_slope(lambda: DPMSolverCodeCoefficients(eta=0.0, lower_order_final=False), fam,
                                 ExactFlow(fam, data))
    assert abs(slope + 2) < 0.3, slope


def test_unip2_without_corrector_is_dpmpp_2m(oracle3):
    """With B(h) = e^{-h} - 1 and rho = 1/2, UniP-2 is algebraically DPM-Solver++(2M) (Zhao et al.
    2023 note this): two independently written updates agree to rounding."""
    times, x = _start(30, oracle3, "leading")
    a = UniPC(order=2, corrector=False).solve(oracle3, x.clone(), times)
    b = DPMSolverPP2M().solve(oracle3, x.clone(), times)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
