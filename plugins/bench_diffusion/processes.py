"""Forward processes: x_t = alpha(t) x_0 + sigma(t) sqrt(Sigma) eps, eps ~ N(0, I), t in [0, 1].

:class:`Process` is the abstract base (posteriors, time grids, prior, provenance from the marginal
and the SDE); :class:`VPProcess` and :class:`VEProcess` cover the four processes of the thesis
(diffusion-math.md section 4); :func:`make_process` builds one by kind. A new process (flow
matching's alpha = 1 - t, sigma = t; EDM's sigma(t) = t) is one subclass added to
:data:`PROCESSES`. :class:`LinearProcess` (flow matching's straight path) is such a subclass; the
flow-matching family builds it directly (bench_diffusion.flow_matching), so it is not in
:data:`PROCESSES`.

- VP (DDPM / NI-DDPM / VP SDE): alpha = sqrt(alpha_bar(t)), sigma = sqrt(1 - alpha_bar(t))
  (2.4.5, 6.2.2-3); SDE dx = -1/2 beta x dt + sqrt(beta) sqrt(Sigma) dw (2.4.44, 6.2.33).
- VE (SMLD / NI-SMLD / VE SDE): alpha = 1, sigma = sigma(t) (2.5.1, 6.3.1);
  SDE dx = sqrt(d sigma^2 / dt) sqrt(Sigma) dw (2.5.13, 6.3.16).

In both, f(t) = d log alpha / dt and g^2(t) = d sigma^2 / dt - 2 f sigma^2 give the SDE
dx = f x dt + g sqrt(Sigma) dw: VP f = 1/2 dlog alpha_bar, g^2 = -dlog alpha_bar = beta(t);
VE f = 0, g^2 = 2 sigma^2 dlog sigma = d sigma^2/dt (section 3 table).

Discrete processes have a training grid of T times: VP t_i = i / T (i = 1..T; t = 0 is the data),
VE t_i = (i - 1) / (L - 1) (i = 1..L). Their continuous form, used by SDE/ODE samplers and the ODE
likelihood, passes exactly through the discrete table: VE geometric/karras sigmas are the schedule's
continuous sigma(t) at the grid; for VP, log alpha_bar is interpolated between the grid points by a
monotone C^1 cubic (PCHIP) through (0, 0) and (i/T, log alpha_bar_i), so a network trained at the
discrete levels is queried at exactly those levels on the grid.

The network's noise-level input is ``1000 t`` (a float in [0, 1000]; the timestep index scaled to
1000 for discrete VP, 1000 (i-1)/(L-1) for discrete VE).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .schedules import VESchedule, VPSchedule, respace


class HermiteCurve:
    """A C^1 piecewise-cubic y(t) through knots (t_k, y_k) with slopes m_k (from scipy's PCHIP),
    evaluated in torch float64 with its derivative."""

    def __init__(self, t: np.ndarray, y: np.ndarray):
        from scipy.interpolate import PchipInterpolator  # here: scipy costs ~0.5 s of `bench validate`

        pchip = PchipInterpolator(t, y)
        self.t = torch.from_numpy(np.asarray(t, np.float64))
        self.y = torch.from_numpy(np.asarray(y, np.float64))
        self.m = torch.from_numpy(np.asarray(pchip.derivative()(t), np.float64))

    def _locate(self, t: torch.Tensor):
        k = (torch.searchsorted(self.t, t.contiguous(), right=True) - 1).clamp(0, len(self.t) - 2)
        h = self.t[k + 1] - self.t[k]
        s = (t - self.t[k]) / h
        return k, h, s

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        k, h, s = self._locate(t)
        s2, s3 = s * s, s * s * s
        return ((2 * s3 - 3 * s2 + 1) * self.y[k] + (s3 - 2 * s2 + s) * h * self.m[k]
                + (-2 * s3 + 3 * s2) * self.y[k + 1] + (s3 - s2) * h * self.m[k + 1])

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        k, h, s = self._locate(t)
        s2 = s * s
        return ((6 * s2 - 6 * s) / h * self.y[k] + (3 * s2 - 4 * s + 1) * self.m[k]
                + (-6 * s2 + 6 * s) / h * self.y[k + 1] + (3 * s2 - 2 * s) * self.m[k + 1])


def _t64(t: Any) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


@dataclass(frozen=True)
class PosteriorCoeffs:
    """q(x_s | x_t, x_0) = N(c_xt x_t + c_x0 x_0, var * Sigma) for s < t, and the transition
    variance var_ts (x_t | x_s ~ N(a_ts x_s, var_ts Sigma)). diffusion-math.md 2.4.21 / 6.2.17."""

    c_xt: float
    c_x0: float
    var: float
    var_ts: float
    alpha_s: float
    sigma_s: float


class Process(abc.ABC):
    """A Gaussian forward process x_t = alpha(t) x_0 + sigma(t) sqrt(Sigma) eps with noise model
    ``noise`` on samples of shape ``shape``: the shared machinery (posteriors, time grids, prior,
    provenance) over the pieces a subclass supplies: ``_build_grid`` and ``default_t_min`` (its
    time domain), ``_alpha_sigma`` (the marginal), ``f``/``g2`` (the SDE) and ``prior_scale``;
    ``_transition`` (the x_t | x_s moments) follows from the marginal unless overridden.

    ``T`` is the number of discrete training levels (None: continuous time, t ~ U[t_min, 1] in
    training). Build one by kind with :func:`make_process`; a new process is one subclass,
    registered in :data:`PROCESSES`.
    """

    kind: ClassVar[str]                  # the capability a family built on it provides ("vp", "ve")
    schedule_type: ClassVar[type]        # the schedule class it accepts
    schedule_names: ClassVar[str]        # for the error message

    def __init__(self, schedule: Any, noise: Any, shape: tuple[int, ...], T: int | None = None,
                 t_min: float | None = None):
        if not isinstance(schedule, self.schedule_type) and getattr(schedule, "kind", None) != self.kind:
            raise ValueError(f"a {self.kind.upper()} process needs a {self.kind.upper()} schedule "
                             f"({self.schedule_names}); "
                             f"got '{getattr(schedule, 'name', type(schedule).__name__)}'")
        if T is not None and T < 2:
            raise ValueError(f"a discrete process needs at least 2 levels, got {T}")
        self.schedule, self.noise, self.shape, self.T = schedule, noise, tuple(shape), T
        self.discrete = T is not None
        self.grid: torch.Tensor | None = None
        self.table: dict[str, Any] = {}
        if self.discrete:
            self._build_grid(T)
        self.t_min, self.t_max = self.check_t_min(self.default_t_min() if t_min is None else t_min), 1.0

    # ------------------------------------------------------------------ what a subclass supplies
    @abc.abstractmethod
    def _build_grid(self, T: int) -> None:
        """Set ``self.grid`` (the T training times, increasing, float64) and ``self.table``."""

    @abc.abstractmethod
    def default_t_min(self) -> float:
        """The lowest time of sampling and training when the user gives none."""

    @abc.abstractmethod
    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha(t), sigma(t) for a float64 tensor t."""

    @abc.abstractmethod
    def f(self, t: Any) -> float:
        """Drift coefficient f(t) = d log alpha / dt of dx = f x dt + g sqrt(Sigma) dw."""

    @abc.abstractmethod
    def g2(self, t: Any) -> float:
        """g(t)^2 = d sigma^2/dt - 2 f sigma^2 of dx = f x dt + g sqrt(Sigma) dw."""

    def _transition(self, t: torch.Tensor, s: Any | None) -> tuple[torch.Tensor, ...]:
        """(sig2_t, sig2_s, var_ts, a_ts, alpha_s) for s < t (``s=None``: the data, alpha = 1,
        sigma = 0): x_t | x_s ~ N(a_ts x_s, var_ts Sigma) with a_ts = alpha_t / alpha_s and
        var_ts = sigma_t^2 - a_ts^2 sigma_s^2, from the marginal. Subclasses may override it with
        a form that is exact in floating point where the generic one cancels."""
        alpha_t, sigma_t = self._alpha_sigma(t)
        if s is None:
            alpha_s, sigma_s = torch.ones_like(t), torch.zeros_like(t)
        else:
            alpha_s, sigma_s = self._alpha_sigma(_t64(s))
        a_ts = alpha_t / alpha_s
        sig2_t, sig2_s = sigma_t * sigma_t, sigma_s * sigma_s
        return sig2_t, sig2_s, sig2_t - a_ts * a_ts * sig2_s, a_ts, alpha_s

    @abc.abstractmethod
    def prior_scale(self, t: Any) -> float:
        """Std of the prior at time t in units of sqrt(Sigma)."""

    def check_t_min(self, t_min: float) -> float:
        """``t_min`` if it is a valid lowest time for this process, else ValueError."""
        if not 0 <= t_min < 1.0:
            raise ValueError(f"t_min must be in [0, 1), got {t_min}")
        return float(t_min)

    @property
    def default_spacing(self) -> str:
        return "linspace"

    # ------------------------------------------------------------------ marginal
    def alpha_sigma(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha(t), sigma(t) (float64 tensors of t's shape). Memoised for Python-number times (a
        sampler asks for the same few times at every batch); fresh tensors are returned each call."""
        if isinstance(t, (int, float)):
            a, s = self.alpha_sigma_floats(t)
            return torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
        return self._alpha_sigma(_t64(t))

    def alpha_sigma_floats(self, t: float) -> tuple[float, float]:
        """alpha(t), sigma(t) as Python floats for a Python-number time (memoised)."""
        cache = self.__dict__.setdefault("_alpha_sigma_cache", {})
        if t not in cache:
            a, s = self._alpha_sigma(_t64(t))
            cache[t] = (float(a), float(s))
        return cache[t]

    def alpha(self, t: Any) -> float:
        return float(self.alpha_sigma(t)[0])

    def sigma(self, t: Any) -> float:
        return float(self.alpha_sigma(t)[1])

    def snr(self, t: Any) -> float:
        a, s = self.alpha_sigma(t)
        return float(a * a / (s * s))

    def input_scale(self, t: Any) -> torch.Tensor | None:
        """The factor c_in(t) = 1 / sqrt(alpha^2 + sigma^2) applied to x_t before a noise-conditional
        network (x_t then has the scale of the data for unit-variance data); None for no scaling."""
        a, s = self.alpha_sigma(t)
        return torch.rsqrt(a * a + s * s)

    # ------------------------------------------------------------------ transitions
    def posterior(self, t: Any, s: Any | None) -> PosteriorCoeffs:
        """Coefficients of q(x_s | x_t, x_0), s < t; ``s=None`` is the data (alpha = 1, sigma = 0).

        With a_ts = alpha_t / alpha_s and var_ts = sigma_t^2 - a_ts^2 sigma_s^2 (the variance of
        x_t | x_s, in units of Sigma): c_xt = a_ts sigma_s^2 / sigma_t^2, c_x0 = alpha_s var_ts /
        sigma_t^2, var = var_ts sigma_s^2 / sigma_t^2. For consecutive DDPM steps these are exactly
        2.4.21 (var_ts = beta_t, var = beta-tilde); the covariance is var * Sigma (6.2.17).
        Memoised for Python-number times (the coefficients are plain floats).
        """
        if isinstance(t, (int, float)) and (s is None or isinstance(s, (int, float))):
            cache = self.__dict__.setdefault("_posterior_cache", {})
            if (t, s) not in cache:
                cache[(t, s)] = self._posterior(t, s)
            return cache[(t, s)]
        return self._posterior(t, s)

    def _posterior(self, t: Any, s: Any | None) -> PosteriorCoeffs:
        sig2_t, sig2_s, var_ts, a_ts, alpha_s = self._transition(_t64(t), s)
        return PosteriorCoeffs(c_xt=float(a_ts * sig2_s / sig2_t), c_x0=float(alpha_s * var_ts / sig2_t),
                               var=float(var_ts * sig2_s / sig2_t), var_ts=float(var_ts),
                               alpha_s=float(alpha_s), sigma_s=float(torch.sqrt(sig2_s)))

    def q_sample(self, x0: torch.Tensor, t: Any, eps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x_0 + sigma(t) sqrt(Sigma) eps (6.2.3 / 6.3.2); ``t`` scalar or (B,)."""
        a, s = self.alpha_sigma(t)
        return _bcast(a, x0) * x0 + _bcast(s, x0) * self.noise.sqrt(eps)

    # ------------------------------------------------------------------ time grids
    def sampling_times(self, steps: int | None, spacing: str | None = None) -> list[float]:
        """``steps`` decreasing times from the top of the grid down to its lowest level.

        Discrete: :func:`schedules.respace` of the T training levels (steps=None: all of them).
        Continuous: ``linspace`` = steps points from 1 to t_min inclusive; ``leading`` =
        t_min + (1 - t_min) k / steps, k = 0..steps-1; ``trailing`` = the same with k = 1..steps.
        """
        spacing = spacing or self.default_spacing
        if self.discrete:
            idx = respace(self.T, self.T if steps is None else int(steps), spacing)
            return [float(self.grid[i - 1]) for i in idx]
        n = 1000 if steps is None else int(steps)
        if n < 1:
            raise ValueError("steps must be >= 1")
        lo, hi = self.t_min, self.t_max
        if spacing == "linspace":
            ts = np.linspace(hi, lo, n) if n > 1 else np.array([hi])
        elif spacing == "leading":
            ts = (lo + (hi - lo) * np.arange(n) / n)[::-1]
        elif spacing == "trailing":
            ts = (lo + (hi - lo) * np.arange(1, n + 1) / n)[::-1]
        else:
            raise ValueError(f"unknown spacing {spacing!r}: use leading, trailing or linspace")
        return [float(v) for v in ts]

    def ode_times(self, steps: int) -> list[float]:
        """steps + 1 uniform times from t_max down to t_min (SDE/ODE integrators)."""
        return [float(v) for v in np.linspace(self.t_max, self.t_min, int(steps) + 1)]

    def sample_t(self, rng: Any) -> torch.Tensor:
        """Training times (B,), float64: uniform over the grid (discrete) or U[t_min, 1]."""
        if self.discrete:
            return self.grid[rng.randint(self.T).cpu()]
        return self.t_min + (self.t_max - self.t_min) * rng.rand(dtype=torch.float64).cpu()

    # ------------------------------------------------------------------ prior
    def prior_sample(self, rng: Any, t: Any | None = None) -> torch.Tensor:
        scale = self.prior_scale(self.t_max if t is None else t)
        return scale * self.noise.sample(rng)

    def prior_log_prob(self, x: torch.Tensor, t: Any | None = None) -> torch.Tensor:
        scale = self.prior_scale(self.t_max if t is None else t)
        return self.noise.log_prob(x, scale * scale)

    # ------------------------------------------------------------------ provenance
    def describe(self, max_table: int = 2000) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "discrete": self.discrete, "T": self.T, "t_min": self.t_min,
                               "t_max": self.t_max, "schedule": self.schedule.describe(),
                               "noise": self.noise.describe(), "time_input": "1000 * t"}
        if self.discrete and self.T <= max_table:
            a, s = self.alpha_sigma(self.grid)
            out["grid"] = {"t": self.grid.tolist(), "alpha": a.tolist(), "sigma": s.tolist()}
            if "betas" in self.table:
                out["grid"]["beta"] = self.table["betas"].tolist()
        return out


class VPProcess(Process):
    """Variance preserving: alpha = sqrt(alpha_bar(t)), sigma = sqrt(1 - alpha_bar(t)) (2.4.5,
    6.2.2-3); f = 1/2 dlog alpha_bar / dt, g^2 = -dlog alpha_bar / dt = beta(t) (2.4.44, 6.2.33).
    Discrete: grid t_i = i / T, log alpha_bar through the PCHIP curve of the module docstring."""

    kind = "vp"
    schedule_type = VPSchedule
    schedule_names = "linear, cosine, quadratic, sigmoid"
    _curve: HermiteCurve | None = None

    def _build_grid(self, T: int) -> None:
        ab = self.schedule.alpha_bars(T)
        knots = np.arange(T + 1, dtype=np.float64) / T
        self._curve = HermiteCurve(knots, np.concatenate([[0.0], np.log(ab)]))
        self.grid = torch.from_numpy(knots[1:])
        self.table = {"betas": self.schedule.betas(T), "alpha_bars": ab}

    def default_t_min(self) -> float:
        return 1.0 / self.T if self.discrete else 1e-3

    def check_t_min(self, t_min: float) -> float:
        t_min = super().check_t_min(t_min)
        if t_min <= 0:
            raise ValueError("a VP process needs t_min > 0 (sigma(0) = 0)")
        return t_min

    @property
    def default_spacing(self) -> str:
        return "leading" if self.discrete else "linspace"

    def log_alpha_bar(self, t: Any) -> torch.Tensor:
        t = _t64(t)
        return self._curve(t) if self._curve is not None else self.schedule.log_alpha_bar(t)

    def dlog_alpha_bar(self, t: Any) -> torch.Tensor:
        t = _t64(t)
        return self._curve.derivative(t) if self._curve is not None else self.schedule.dlog_alpha_bar(t)

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lab = self.log_alpha_bar(t)
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab))

    def f(self, t: Any) -> float:
        return 0.5 * float(self.dlog_alpha_bar(t))

    def g2(self, t: Any) -> float:
        return -float(self.dlog_alpha_bar(t))

    def _transition(self, t: torch.Tensor, s: Any | None) -> tuple[torch.Tensor, ...]:
        """In log alpha_bar, with expm1: exact for the tiny var_ts of neighbouring levels."""
        lab_t = self.log_alpha_bar(t)
        lab_s = torch.zeros_like(t) if s is None else self.log_alpha_bar(s)
        var_ts = -torch.expm1(lab_t - lab_s)
        sig2_t, sig2_s = -torch.expm1(lab_t), -torch.expm1(lab_s)
        a_ts, alpha_s = torch.exp(0.5 * (lab_t - lab_s)), torch.exp(0.5 * lab_s)
        return sig2_t, sig2_s, var_ts, a_ts, alpha_s

    def prior_scale(self, t: Any) -> float:
        """1: the prior is N(0, Sigma), since alpha^2 + sigma^2 = 1."""
        return 1.0

    def input_scale(self, t: Any) -> None:
        """None: alpha^2 + sigma^2 = 1, so the network sees x_t as it is."""
        return None


class VEProcess(Process):
    """Variance exploding: alpha = 1, sigma = sigma(t) (2.5.1, 6.3.1); f = 0,
    g^2 = d sigma^2 / dt = 2 sigma^2 dlog sigma / dt (2.5.13, 6.3.16). Discrete: grid
    t_i = (i - 1) / (T - 1), the schedule's sigma(t) at the grid."""

    kind = "ve"
    schedule_type = VESchedule
    schedule_names = "geometric, karras"

    def _build_grid(self, T: int) -> None:
        self.grid = torch.linspace(0, 1, T, dtype=torch.float64)
        self.table = {"sigmas": self.schedule.sigmas(T)}

    def default_t_min(self) -> float:
        return 0.0

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), torch.exp(self.schedule.log_sigma(t))

    def f(self, t: Any) -> float:
        return 0.0

    def g2(self, t: Any) -> float:
        t = _t64(t)
        return float(2 * torch.exp(2 * self.schedule.log_sigma(t)) * self.schedule.dlog_sigma(t))

    def _transition(self, t: torch.Tensor, s: Any | None) -> tuple[torch.Tensor, ...]:
        """alpha = 1: var_ts = sigma_t^2 - sigma_s^2."""
        sig2_t = torch.exp(2 * self.schedule.log_sigma(t))
        sig2_s = torch.zeros_like(t) if s is None else torch.exp(2 * self.schedule.log_sigma(_t64(s)))
        return sig2_t, sig2_s, sig2_t - sig2_s, torch.ones_like(t), torch.ones_like(t)

    def prior_scale(self, t: Any) -> float:
        """sigma(t): the prior is N(0, sigma^2 Sigma) (E10)."""
        return self.sigma(t)


class StraightPath:
    """The schedule of :class:`LinearProcess`: nothing to choose (alpha = 1 - t, sigma = t)."""

    kind = name = "linear"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "alpha": "1 - t", "sigma": "t"}


class LinearProcess(Process):
    """The straight path of flow matching / rectified flow: alpha = 1 - t, sigma = t, so
    x_t = (1 - t) x_0 + t sqrt(Sigma) eps (Lipman et al. 2023 eq. 20 with sigma_min = 0, Liu et al.
    2023 eq. 1, in bench's time: t = 0 is the data, t = 1 the source noise N(0, Sigma); their time
    is 1 - t). f = d log alpha/dt = -1/(1 - t), g^2 = d sigma^2/dt - 2 f sigma^2 = 2t / (1 - t)
    (both diverge at t = 1, where alpha = 0: the SDE view is singular there, the ODE is not).
    The rates d alpha/dt = -1, d sigma/dt = 1 are exact (:meth:`d_alpha_sigma`)."""

    kind = "linear"
    schedule_type = StraightPath
    schedule_names = "the straight path (no schedule)"

    def _build_grid(self, T: int) -> None:
        self.grid = torch.arange(1, T + 1, dtype=torch.float64) / T

    def default_t_min(self) -> float:
        return 0.0

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1.0 - t, t.clone()

    def d_alpha_sigma(self, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha/dt, d sigma/dt) = (-1, 1)."""
        t = _t64(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def f(self, t: Any) -> float:
        return -math.inf if float(t) >= 1 else -1.0 / (1.0 - float(t))

    def g2(self, t: Any) -> float:
        return math.inf if float(t) >= 1 else 2.0 * float(t) / (1.0 - float(t))

    def prior_scale(self, t: Any) -> float:
        """sigma(t): exact at t = 1, where x_1 = sqrt(Sigma) eps is the source noise."""
        return self.sigma(t)


PROCESSES: dict[str, type[Process]] = {"vp": VPProcess, "ve": VEProcess}


def make_process(kind: str, schedule: Any, noise: Any, shape: tuple[int, ...], T: int | None = None,
                 t_min: float | None = None) -> Process:
    """The process of kind ``kind`` (a key of :data:`PROCESSES`)."""
    if kind not in PROCESSES:
        raise ValueError(f"process kind must be one of {', '.join(repr(k) for k in PROCESSES)}, got {kind!r}")
    return PROCESSES[kind](schedule, noise, shape, T=T, t_min=t_min)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = v.to(device=like.device, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v


def levels_info(process: Process, times: list[float]) -> dict[str, list[float]]:
    """The realised sequence of a sampler: times, alpha, sigma (and the network input 1000 t)."""
    t = torch.tensor(times, dtype=torch.float64)
    a, s = process.alpha_sigma(t)
    return {"t": [round(v, 10) for v in times], "net_input": [1000 * v for v in times],
            "alpha": a.tolist(), "sigma": s.tolist(), "sigma_over_alpha": (s / a).tolist()}


def harmonic_mean(values: np.ndarray) -> float:
    """sigma_H with 1 / sigma_H = mean(1 / sigma_i) (section 4.2.4)."""
    return float(1.0 / np.mean(1.0 / np.asarray(values, np.float64)))


