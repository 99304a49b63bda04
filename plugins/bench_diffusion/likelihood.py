"""Likelihoods of the diffusion families (DESIGN.md section 7; ddpm-basics.md section 5 and 6.2
items 8-10; diffusion-math.md section 3).

``ode``: the probability-flow ODE dx/dt = v(x, t) = f x - 1/2 g^2 Sigma s from t_min to 1 with
d log p / dt = -div v, so

    log p_{t_min}(x) = log p_prior(x(1)) + int_{t_min}^1 div v(x(t), t) dt,

with div v exact (D vector-Jacobian products per evaluation) or Hutchinson's z^T (dv/dx) z with one
probe z (Rademacher or Gaussian) drawn from ``rng`` and fixed for the whole solve. Continuous NLL of
the given x in model space (nats per sample).

``vlb``: the discrete DDPM variational bound (Ho et al. 2020) of a discrete process on data with
L levels, generalised to Sigma:

    L = KL(q(x_T | x_0) || prior) + sum_{i=2}^T KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p(x_{t_{i-1}} | x_{t_i}))
        - log p(x_0 | x_{t_1}),

each KL term at its own x_t ~ q(x_t | x_0) (one network call each: NFE = T per sample). The prior
and every reverse step are Gaussians with covariance proportional to Sigma: the model step is the
posterior with x0_hat in place of x_0 and variance beta-tilde (``variance: beta_tilde``) or beta
(``beta``). The decoder p(x_0 | x_{t_1}) is a discretised Gaussian with mean x0_hat and
per-dimension variance v_1 diag(Sigma) over bins of width 2 / (L - 1) in model space (the edge bins
extend to +-infinity), with

    v_1 = sigma(t_1)^2 / alpha(t_1)^2

for both processes and both ``variance`` options: the spread of x_0 = (x_{t_1} - sigma eps) / alpha
around its prediction (VE: sigma_min^2; VP: beta_1 / (1 - beta_1)). (The posterior variance
beta-tilde of the second level, improved-diffusion's clipped choice, is far below sigma_1^2 for VE
and made the VE bound grow with T.) A discrete NLL in nats.

The decoder is diagonal, not proportional to Sigma: a discretised full-covariance Gaussian has no
per-pixel closed form. Against a decoder N(x0_hat, v_1 Sigma) this costs, for bins much finer than
sigma_1 and x_0 - x0_hat ~ N(0, v_1 Sigma),

    gap = KL(N(0, v_1 Sigma) || N(0, v_1 diag Sigma)) / D = (sum_d log Sigma_dd - log det Sigma) / (2 D)

nats per dimension (-log det Sigma / (2 D) when diag Sigma = 1, as for GFF noise; 0 for diagonal
Sigma), reported as ``vlb_decoder_gap_bound`` with every VLB so that NI and isotropic VLBs can be
compared. Coarser bins wash part of it out.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch

from bench.likelihood import levels_from_model, model_from_levels, quantize
from bench.ode import divergence, is_fixed_grid, solve_ode
from bench.protocols import LikelihoodResult


def gaussian_kl(var_q: float, var_p: float, dmean_quad: torch.Tensor, dim: int) -> torch.Tensor:
    """KL(N(m_q, var_q Sigma) || N(m_p, var_p Sigma)) = 1/2 [D var_q / var_p - D + D log(var_p / var_q)
    + (m_q - m_p)^T Sigma^-1 (m_q - m_p) / var_p]; ``dmean_quad`` is the quadratic form (B,)."""
    return 0.5 * (dim * (var_q / var_p - 1.0 + math.log(var_p / var_q)) + dmean_quad / var_p)


def log_prob_diff_ndtr(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, stable in both tails (via the symmetric side)."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + torch.log((-torch.expm1(la - lb)).clamp_min(1e-300))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(bin of x) per element under N(mean, std^2), bins of half-width 1/(L-1) around the
    levels x = 2k/(L-1) - 1; the bins of k = 0 and k = L-1 extend to -inf / +inf."""
    k = levels_from_model(x, levels)
    xq = model_from_levels(k, levels)
    half = 1.0 / (levels - 1)
    hi = torch.where(k >= levels - 1, torch.full_like(xq, math.inf), (xq + half - mean) / std)
    lo = torch.where(k <= 0, torch.full_like(xq, -math.inf), (xq - half - mean) / std)
    return log_prob_diff_ndtr(lo, hi)


def vlb(family: Any, x0: torch.Tensor, rng: Any, variance: Literal["beta_tilde", "beta"] = "beta_tilde",
        levels: int | None = None, clip_x0: bool | None = None) -> LikelihoodResult:
    """The discrete VLB (see the module docstring); ``levels`` defaults to the dataset's L."""
    proc = family.process
    if not proc.discrete:
        raise ValueError("the vlb likelihood needs a discrete process (ddpm, ni_ddpm, smld, ni_smld, oracle with T)")
    levels = levels or family.levels
    if not levels:
        raise ValueError("the vlb likelihood needs quantised data (DataInfo.levels); this dataset is continuous: "
                         "use method 'ode'")
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"variance must be beta_tilde or beta, got {variance!r}")
    noise, shape = family.noise, family.shape
    dim = int(x0[0].numel())
    x0 = quantize(x0, levels)
    grid = [float(t) for t in proc.grid]
    lo, hi = family.value_range if family.value_range is not None else (-1.0, 1.0)
    clip = (family.value_range is not None) if clip_x0 is None else clip_x0

    def predict(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        xt = proc.q_sample(x0, t, rng.randn(*shape).to(x0))
        x0_hat = family.x0(xt, t, family.eps(xt, t))
        return xt, x0_hat.clamp(lo, hi) if clip else x0_hat

    with torch.no_grad():
        a_T, s_T = (float(v) for v in proc.alpha_sigma(grid[-1]))
        p2 = proc.prior_scale(grid[-1]) ** 2
        prior = gaussian_kl(s_T ** 2, p2, a_T ** 2 * noise.quad(x0), dim)
        kl = torch.zeros_like(prior)
        for i in range(len(grid) - 1, 0, -1):
            t, s = grid[i], grid[i - 1]
            _, x0_hat = predict(t)
            pc = proc.posterior(t, s)
            var_p = pc.var if variance == "beta_tilde" else pc.var_ts
            kl = kl + gaussian_kl(pc.var, var_p, pc.c_x0 ** 2 * noise.quad(x0 - x0_hat), dim)
        xt, x0_hat = predict(grid[0])
        pc1 = proc.posterior(grid[0], None)
        mean = pc1.c_xt * xt + pc1.c_x0 * x0_hat
        v1 = 1.0 / proc.snr(grid[0])  # sigma(t_1)^2 / alpha(t_1)^2
        diag = noise.variances()
        std = torch.sqrt(v1 * diag).to(x0)
        decoder = -discretized_gaussian_log_prob(x0, mean, std, levels).flatten(1).sum(1)
    nll = prior + kl + decoder
    return LikelihoodResult(nll=nll, kind="discrete", method="vlb", nfe=float(len(grid)),
                            extra={"vlb_prior": float(prior.mean()), "vlb_kl": float(kl.mean()),
                                   "vlb_decoder": float(decoder.mean()),
                                   "vlb_decoder_gap_bound": diagonal_decoder_gap(noise, diag)})


def diagonal_decoder_gap(noise: Any, diag: torch.Tensor | None = None) -> float:
    """(sum_d log Sigma_dd - log det Sigma) / (2 D) = KL(N(0, Sigma) || N(0, diag Sigma)) / D, nats
    per dimension: what the diagonal VLB decoder costs against one proportional to Sigma (see the
    module docstring). 0 for a diagonal Sigma, -log det Sigma / (2 D) when diag Sigma = 1."""
    diag = noise.variances() if diag is None else diag
    return float((torch.log(diag.to(torch.float64)).sum() - noise.logdet()) / (2 * noise.dim))


def ode_nll(family: Any, x: torch.Tensor, rng: Any, estimator: Literal["hutchinson", "exact"] = "hutchinson",
            probe: Literal["rademacher", "gaussian"] = "rademacher", solver: str = "dopri5",
            atol: float = 1e-5, rtol: float = 1e-5, steps: int | None = None,
            t_min: float | None = None) -> LikelihoodResult:
    """NLL of x through the probability-flow ODE (see the module docstring). ``solver`` is any
    solver of :mod:`bench.ode`: fixed-grid ones take ``steps`` uniform steps, adaptive ones use
    ``atol``/``rtol`` and take no ``steps``."""
    proc = family.process
    fixed = is_fixed_grid(solver)
    if fixed != (steps is not None):
        raise ValueError(f"the {'fixed-grid' if fixed else 'adaptive'} ODE solver {solver!r} "
                         f"{'needs' if fixed else 'takes no'} steps")
    if estimator not in ("hutchinson", "exact"):
        raise ValueError(f"estimator must be hutchinson or exact, got {estimator!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be rademacher or gaussian, got {probe!r}")
    t0 = proc.t_min if t_min is None else proc.check_t_min(float(t_min))
    shape = tuple(x.shape[1:])
    z = None
    if estimator == "hutchinson":
        z = (rng.rademacher(*shape) if probe == "rademacher" else rng.randn(*shape)).to(x)
    calls = [0]

    def func(t, state):
        y = state[0]
        calls[0] += 1
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = family.pf_drift(y, float(t))
            div, _ = divergence(v, y, z)
        return v.detach(), div.detach()

    grid = torch.tensor([t0, proc.t_max], dtype=torch.float64)
    if steps is not None:
        grid = torch.linspace(t0, proc.t_max, int(steps) + 1, dtype=torch.float64)
    with torch.no_grad():
        xs, dl = solve_ode(func, (x.detach(), torch.zeros(len(x), dtype=x.dtype, device=x.device)), grid,
                           solver, atol=atol, rtol=rtol, land_on_times=not fixed)
        x1, delta = xs[-1], dl[-1]
        prior = proc.prior_log_prob(x1)
    nll = -(prior + delta)
    return LikelihoodResult(nll=nll, kind="continuous", method="ode", nfe=float(calls[0]),
                            extra={"ode_prior_logp": float(prior.mean()), "ode_delta_logp": float(delta.mean()),
                                   "ode_t_min": t0, "ode_exact_trace": float(estimator == "exact")})
