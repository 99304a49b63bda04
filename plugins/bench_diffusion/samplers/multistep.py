"""Multistep exponential-integrator samplers for VP families (docs/diffusion.md, "Multistep solvers"):
``dpmpp_2m``, ``dpmpp_3m_sde``, ``unipc`` and ``deis``, Sigma-aware.

All four integrate the probability-flow ODE (or, for ``dpmpp_3m_sde``, a reverse SDE) in the
half-log-SNR lambda = log(alpha / sigma). With x_t = alpha x_0 + sigma sqrt(Sigma) eps and the data
prediction D(x, t) = x0_hat = (x - sigma sqrt(Sigma) eps_hat) / alpha, the PF-ODE of section 3,
dx/dt = f x - 1/2 g^2 Sigma s with Sigma s = -(x - alpha D) / sigma^2, has only *scalar*
coefficients, so its variation-of-constants solution (Lu et al. 2022b, eq. (8))

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D(x_lambda, lambda) dlambda

holds verbatim for any noise covariance Sigma: Sigma enters only through D (the family's Tweedie
step) and through injected noise, which is sqrt(Sigma) z (``family.noise.sample``). Each solver
replaces D inside the integral by a polynomial through its last k data predictions and integrates it
exactly. Grid: ``process.sampling_times(steps, spacing)`` (the respaced training grid, as DDIM), one
network call per level, NFE = steps; the last level steps to the data (sigma = 0, lambda = inf),
where every formula reduces to its first-order form x_0 = D (``final="data"``). ``solve`` can also stop
at the last level instead (``final="level"``, steps - 1 calls: order tests and diffusers' DEIS).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..conditioning import Guidance, GuidanceInterval
from .base import DiffusionSampler
from bench.types import Spacing, Steps

Final = Literal["data", "level"]
MAX_RATIO = 2.0  # lower_order_final: a step longer than this many times the previous one is first order


class Levels:
    """alpha_i, sigma_i, lambda_i = log alpha_i - log sigma_i at the sampler's times (Python floats)."""

    def __init__(self, process: Any, times: list[float]):
        pairs = [process.alpha_sigma_floats(t) for t in times]
        self.t = list(times)
        self.alpha = [a for a, _ in pairs]
        self.sigma = [s for _, s in pairs]
        self.lam = [math.log(a) - math.log(s) for a, s in pairs]

    def ratio(self, j: int) -> float:
        """(lambda_{j+1} - lambda_j) / (lambda_j - lambda_{j-1}): how far step j extrapolates."""
        return math.inf if j == 0 else (self.lam[j + 1] - self.lam[j]) / (self.lam[j] - self.lam[j - 1])


class MultistepSampler(DiffusionSampler):
    """Shared loop: a data prediction per level, a history of the last ``order`` predictions, and the
    order of each step (warm-up from first order; ``lower_order_final``)."""

    uses_sampling_times = True

    order = 1
    lower_order_final = True

    def __init__(self, steps: Steps = 20, spacing: Spacing | None = None, clip_x0: bool | None = None,
                 guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, True, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)

    def data_pred(self, family: Any, x: torch.Tensor, t: float) -> torch.Tensor:
        """D = x0_hat (one network call), clipped to the data's range when clipping is on."""
        return self.clip(family, family.x0(x, t, family.eps(x, t)))

    def step_order(self, j: int, m: int, to_data: bool, ratio: float = 1.0) -> int:
        """Order of step j of m (j = 0..m-1): at most j + 1 (the predictions available); the step to
        the data (lambda = inf) is first order. With ``lower_order_final``: on short grids (m < 15)
        the last step is first order and the one before at most second (DPM-Solver's rule), and a
        step more than MAX_RATIO times as long in lambda as the one before (``ratio``) is first order:
        extrapolating the history that far amplifies its errors (and, for SDEs, its noise); on
        bench's ``leading`` and ``linspace`` grids this is the last step into t_min (ratio 2.5-4.7
        for 10..200 steps), on ``trailing`` grids it never happens (ratio <= 1.61)."""
        k = min(self.order, j + 1)
        if to_data and j == m - 1:
            return 1
        if self.lower_order_final:
            if ratio > MAX_RATIO:
                return 1
            if m < 15:
                k = 1 if j == m - 1 else (min(k, 2) if j == m - 2 else k)
        return k

    def sample(self, family: Any, rng: Any) -> torch.Tensor:
        proc = family.process
        times = proc.sampling_times(self.steps, self.spacing)
        self.record(family, times, **self.extra())
        x = proc.prior_sample(rng, times[0])
        return self.solve(family, x, times, rng)

    def extra(self) -> dict[str, Any]:
        return {"order": self.order}

    def solve(self, family: Any, x: torch.Tensor, times: list[float], rng: Any = None,
              final: Final = "data") -> torch.Tensor:
        """Integrate from x at times[0]: to the data (one call per time, returns x_0) or, with
        ``final="level"``, to times[-1] (len(times) - 1 calls, returns x at times[-1])."""
        lv = Levels(family.process, times)
        to_data = final == "data"
        m = len(times) if to_data else len(times) - 1
        hist: list[torch.Tensor] = []  # model values at levels j, j-1, ... (newest first)
        for j in range(m):
            hist.insert(0, self.model_value(family, x, lv, j))
            del hist[self.keep():]
            if to_data and j == m - 1:
                return self.to_data(family, x, lv, j, hist)
            x = self.step(family, x, lv, j, hist, self.step_order(j, m, to_data, lv.ratio(j)), rng)
        return x

    # subclasses
    def keep(self) -> int:
        return self.order

    def model_value(self, family: Any, x: torch.Tensor, lv: Levels, j: int) -> torch.Tensor:
        return self.data_pred(family, x, lv.t[j])

    def to_data(self, family: Any, x: torch.Tensor, lv: Levels, j: int, hist: list) -> torch.Tensor:
        return hist[0]

    def step(self, family, x, lv, j, hist, k, rng):
        raise NotImplementedError  # abstract: one step from level j to level j + 1 of order k


class DPMSolverPP2M(MultistepSampler):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2; data prediction, eq. (8)): with
    h = lambda_{j+1} - lambda_j and r = (lambda_j - lambda_{j-1}) / h,

        D' = (1 + 1/(2r)) D_j - 1/(2r) D_{j-1},
        x_{j+1} = (sigma_{j+1} / sigma_j) x_j - alpha_{j+1} (e^{-h} - 1) D',

    first order (D' = D_j, DDIM) on the first step and where :meth:`MultistepSampler.step_order`'s
    ``lower_order_final`` rules say so (always on here); the step to the data returns D. NFE = steps."""

    name = "dpmpp_2m"
    order = 2

    def step(self, family, x, lv, j, hist, k, rng):
        h = lv.lam[j + 1] - lv.lam[j]
        d = hist[0]
        if k == 2:
            r = (lv.lam[j] - lv.lam[j - 1]) / h
            d = d + (d - hist[1]) / (2 * r)
        return (lv.sigma[j + 1] / lv.sigma[j]) * x - (lv.alpha[j + 1] * math.expm1(-h)) * d


def phi_integrals(h: float, c: float, n: int) -> list[float]:
    """J_k = int_0^h c e^{-c (h - u)} u^k / k! du for k < n, by J_0 = 1 - e^{-c h} and the
    integration by parts J_k = h^k / k! - J_{k-1} / c (float64)."""
    out = [-math.expm1(-c * h)]
    for k in range(1, n):
        out.append(h ** k / math.factorial(k) - out[-1] / c)
    return out


class DPMSolverPP3MSDE(MultistepSampler):
    """DPM-Solver++(3M) SDE: the exponential integrator of the SDE variant of DPM-Solver++ (Lu et al.
    2022b, "SDE-DPM-Solver++": eq. (8) with the reverse SDE's extra e^{-h}), with ``eta`` in [0, 1]
    interpolating the PF-ODE (0) and the reverse SDE (1). Exactly, for c = 1 + eta,

        x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t int_0^h c e^{-c (h - u)} D(lambda_s + u) du
              + sigma_t sqrt(1 - e^{-2 eta h}) sqrt(Sigma) z

    (mean alpha_t x_0 and covariance sigma_t^2 Sigma for a point mass: the marginals are kept). D is
    replaced by the quadratic through the last three predictions, D(lambda_s + u) ~ D_j + u D' + u^2/2 D''
    with the Newton divided differences f01 = (D_j - D_{j-1}) / h_1, f12 = (D_{j-1} - D_{j-2}) / h_2,
    f012 = (f01 - f12) / (h_1 + h_2): D' = f01 + h_1 f012, D'' = 2 f012 (h_i the previous lambda
    steps), and integrated exactly with :func:`phi_integrals`: x_t = ... + alpha_t (J_0 D_j + J_1 D' +
    J_2 D''). Warm-up: orders 1, 2, then 3; ``lower_order_final`` as DPM-Solver. NFE = steps."""

    name = "dpmpp_3m_sde"
    order = 3

    def __init__(self, steps: Steps = 20, spacing: Spacing | None = None, eta: Annotated[float, Field(ge=0, le=1)] = 1.0,
                 lower_order_final: bool = True, clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.eta, self.lower_order_final = eta, lower_order_final

    def params(self):
        return {**super().params(), "eta": self.eta, "lower_order_final": self.lower_order_final}

    def extra(self):
        return {"order": self.order, "eta": self.eta}

    def step(self, family, x, lv, j, hist, k, rng):
        h = lv.lam[j + 1] - lv.lam[j]
        jk = phi_integrals(h, 1.0 + self.eta, k)
        drift = jk[0] * hist[0]
        if k >= 2:
            h1 = lv.lam[j] - lv.lam[j - 1]
            f01 = (hist[0] - hist[1]) / h1
            if k == 2:
                drift = drift + jk[1] * f01
            else:
                h2 = lv.lam[j - 1] - lv.lam[j - 2]
                f012 = (f01 - (hist[1] - hist[2]) / h2) / (h1 + h2)
                drift = drift + jk[1] * (f01 + h1 * f012) + (2 * jk[2]) * f012
        x = (lv.sigma[j + 1] / lv.sigma[j] * math.exp(-self.eta * h)) * x + lv.alpha[j + 1] * drift
        if self.eta > 0:
            x = x + lv.sigma[j + 1] * math.sqrt(-math.expm1(-2 * self.eta * h)) * family.noise.sample(rng).to(x)
        return x


def unipc_system(h: float, rks: list[float], p: int, variant: str) -> tuple[float, float, np.ndarray, np.ndarray]:
    """UniPC's linear system in data-prediction form (Zhao et al. 2023, section 3: UniC and UniP):
    with hh = -h, h phi_1 = e^{hh} - 1 and
    h phi_{k+1} = h phi_k / hh - 1 / k!, ``R[i] = rks^i`` and ``b[i] = h phi_{i+2} (i + 1)! / B(h)``,
    B(h) = hh (``bh1``) or e^{hh} - 1 (``bh2``). Returns (h phi_1, B(h), R, b)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, fact = h_phi_1 / hh - 1.0, 1
    r_rows, b = [], []
    for i in range(1, p + 1):
        r_rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return h_phi_1, b_h, np.array(r_rows, dtype=np.float64), np.array(b, dtype=np.float64)


class UniPC(MultistepSampler):
    """UniPC (Zhao et al. 2023) in data-prediction form, ``variant`` bh2 (B(h) = e^{-h} - 1) or bh1
    (B(h) = -h), ``order`` p in 1..3. From level j (prediction D_j) to j + 1, with
    h = lambda_{j+1} - lambda_j, r_k = (lambda_{j-k} - lambda_j) / h and D1_k = (D_{j-k} - D_j) / r_k:

        UniP-p:  x_{j+1} = (sigma_{j+1}/sigma_j) x_j - alpha_{j+1} h phi_1 D_j
                                     - alpha_{j+1} B(h) sum_{k<p} rho^p_k D1_k,
        UniC-p:  x^c_{j+1} = same with sum_{k<p} rho^c_k D1_k + rho^c_p (D_{j+1} - D_j),

    rho^p solves R[:-1, :-1] rho = b[:-1] (rho^p = 1/2 when p = 2), rho^c solves R rho = b
    (1/2 when p = 1) (:func:`unipc_system`). The corrector re-uses D_{j+1}, the network call at the
    predicted point that the next predictor needs anyway, so NFE = steps (the corrector costs no call).
    ``lower_order_final``: step j of m has order min(p, m - j) (UniPC's rule for short grids), and
    a step more than MAX_RATIO times longer than the one before is first order (as DPM-Solver)."""

    name = "unipc"

    def __init__(self, steps: Steps = 20, spacing: Spacing | None = None, order: Literal[1, 2, 3] = 2,
                 variant: Literal["bh1", "bh2"] = "bh2", corrector: bool = True, lower_order_final: bool = True,
                 clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.order, self.variant, self.corrector = int(order), variant, corrector
        self.lower_order_final = lower_order_final

    def params(self):
        return {**super().params(), "order": self.order, "variant": self.variant, "corrector": self.corrector,
                "lower_order_final": self.lower_order_final}

    def extra(self):
        return {"order": self.order, "variant": self.variant, "corrector": self.corrector}

    def keep(self) -> int:
        return self.order + 1

    def step_order(self, j: int, m: int, to_data: bool, ratio: float = 1.0) -> int:
        k = min(self.order, j + 1)
        if to_data and j == m - 1:
            return 1
        if self.lower_order_final:
            k = 1 if ratio > MAX_RATIO else min(k, m - j)
        return k

    def _update(self, x, lv, j, hist, p, rhos_from, d_next=None):
        """x_{j+1} from x_j with predictions hist = [D_j, D_{j-1}, ...] (predictor), plus the
        corrector's term in D_{j+1} when ``d_next`` is given."""
        h = lv.lam[j + 1] - lv.lam[j]
        rks = [(lv.lam[j - k] - lv.lam[j]) / h for k in range(1, p)] + [1.0]
        h_phi_1, b_h, r, b = unipc_system(h, rks, p, self.variant)
        x_new = (lv.sigma[j + 1] / lv.sigma[j]) * x - (lv.alpha[j + 1] * h_phi_1) * hist[0]
        rhos = rhos_from(r, b, p)
        terms = [rhos[k - 1] * ((hist[k] - hist[0]) / rks[k - 1]) for k in range(1, p)]
        if d_next is not None:
            terms.append(rhos[-1] * (d_next - hist[0]))
        return x_new - (lv.alpha[j + 1] * b_h) * sum(terms) if terms else x_new

    @staticmethod
    def _rhos_p(r, b, p):
        return [0.5] if p == 2 else ([float(v) for v in np.linalg.solve(r[:-1, :-1], b[:-1])] if p > 2 else [])

    @staticmethod
    def _rhos_c(r, b, p):
        return [0.5] if p == 1 else [float(v) for v in np.linalg.solve(r, b)]

    def solve(self, family: Any, x: torch.Tensor, times: list[float], rng: Any = None,
              final: Final = "data") -> torch.Tensor:
        lv = Levels(family.process, times)
        to_data = final == "data"
        m = len(times) if to_data else len(times) - 1
        hist: list[torch.Tensor] = []
        x_prev, p_prev = None, 0
        for j in range(m):
            d = self.data_pred(family, x, lv.t[j])
            if x_prev is not None and self.corrector:  # UniC: correct x_j with D_j at the predicted point
                x = self._update(x_prev, lv, j - 1, hist, p_prev, self._rhos_c, d_next=d)
            hist.insert(0, d)
            del hist[self.keep():]
            if to_data and j == m - 1:
                return d
            p = self.step_order(j, m, to_data, lv.ratio(j))
            x_prev, p_prev = x, p
            x = self._update(x, lv, j, hist, p, self._rhos_p)
        return x


def lagrange_rho_integrals(lams: list[float], lam_t: float) -> list[float]:
    """c_i = int_{rho_0}^{rho_t} L_i(log rho) drho, rho = e^{-lambda}, for the Lagrange basis L_i
    in log rho through the nodes log rho_i = -lams[i] (lams[0] the current level). With
    u = log(rho / rho_0), c_i = rho_0 int_0^U L_i(u) e^u du, U = lams[0] - lam_t, and
    int_0^U u^k e^u du = I_k: I_0 = e^U - 1, I_k = U^k e^U - k I_{k-1}."""
    nodes = [lams[0] - lv for lv in lams]  # u_i = log rho_i - log rho_0
    big_u = lams[0] - lam_t
    ints = [math.expm1(big_u)]
    for k in range(1, len(nodes)):
        ints.append(big_u ** k * math.exp(big_u) - k * ints[-1])
    rho0 = math.exp(-lams[0])
    out = []
    for i, ui in enumerate(nodes):
        others = [u for m, u in enumerate(nodes) if m != i]
        coef = np.polynomial.polynomial.polyfromroots(others) if others else np.array([1.0])
        coef = coef / np.prod([ui - u for u in others]) if others else coef
        out.append(rho0 * float(sum(ck * ik for ck, ik in zip(coef, ints))))
    return out


class DEIS(MultistepSampler):
    """DEIS (Zhang & Chen 2022), the multistep "tAB-DEIS" with Lagrange extrapolation in log rho (the
    basis of diffusers' ``logrho``): in y = x / alpha and rho = sigma / alpha = e^{-lambda} the PF-ODE is
    dy / drho = sqrt(Sigma) eps_hat (their exponential-integrator form, section 3). The model value
    E_j = sqrt(Sigma) eps_hat = (x_j - alpha_j D_j) / sigma_j is interpolated by the Lagrange polynomial in
    log rho through the last k levels and integrated exactly (:func:`lagrange_rho_integrals`):

        x_{j+1} = alpha_{j+1} (x_j / alpha_j + sum_i c_i E_{j-i}).

    ``order`` 1..3 (1 is DDIM), warm-up and ``lower_order_final`` as DPM-Solver; the step to the data
    returns D. NFE = steps."""

    name = "deis"

    def __init__(self, steps: Steps = 20, spacing: Spacing | None = None, order: Literal[1, 2, 3] = 3,
                 lower_order_final: bool = True, clip_x0: bool | None = None, guidance: Guidance = 0.0,
                 guidance_interval: GuidanceInterval | None = None, context: Any = None):
        super().__init__(steps, spacing, clip_x0, context=context,
                         guidance=guidance, guidance_interval=guidance_interval)
        self.order, self.lower_order_final = int(order), lower_order_final

    def params(self):
        return {**super().params(), "order": self.order, "lower_order_final": self.lower_order_final}

    def model_value(self, family, x, lv, j):
        return (x - lv.alpha[j] * self.data_pred(family, x, lv.t[j])) / lv.sigma[j]

    def to_data(self, family, x, lv, j, hist):
        """x_0 = D = (x - sigma E) / alpha (the first-order step to sigma = 0)."""
        return (x - lv.sigma[j] * hist[0]) / lv.alpha[j]

    def step(self, family, x, lv, j, hist, k, rng):
        cs = lagrange_rho_integrals([lv.lam[j - i] for i in range(k)], lv.lam[j + 1])
        y = x / lv.alpha[j]
        for c, e in zip(cs, hist):
            y = y + c * e
        return lv.alpha[j + 1] * y
