"""Noise schedules, discrete and continuous, and respacing (diffusion-math.md sections 1.8, 2, 4.2,
7 item 2; ddpm-basics.md section 5).

VP schedules (``linear``, ``cosine``, ``quadratic``, ``sigmoid``) give

- ``betas(T)``: the discrete beta_1..beta_T (float64), alpha_bar_t = prod_{s<=t} (1 - beta_s);
- ``log_alpha_bar(t)`` / ``dlog_alpha_bar(t)`` on t in [0, 1]: the continuous form,
  alpha_bar(t) = exp(-int_0^t beta(s) ds) with beta(t) = T0 * beta_disc(t) and T0 = 1000, so that
  ``linear`` is the VP SDE with beta_min = 0.1, beta_max = 20 (Song et al. 2021; section 1.8, 2.4.68).

VE schedules (``geometric``, ``karras``) give ``sigmas(L)`` (increasing, sigma_1 = sigma_min ...
sigma_L = sigma_max, E8: named ``sigma_min``/``sigma_max``, never by index) and the continuous
``log_sigma(t)`` with sigma(0) = sigma_min, sigma(1) = sigma_max, the discrete levels sitting at
t_i = (i - 1) / (L - 1). ``sigma_max="auto"`` is fitted to the data by :meth:`VESchedule.fit`:
the maximum pairwise distance in the Sigma^-1 metric, max ||sqrt(Sigma)^-1 (x_i - x_j)|| (section 4.2.1).

:func:`respace` picks N of T discrete timesteps (``leading`` / ``trailing`` / ``linspace``, the
conventions of diffusers' schedulers; ``leading`` is the thesis code's ``range(0, T, T // N)``).
"""
from __future__ import annotations

import abc
import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

T0 = 1000.0  # continuous beta(t) = T0 * beta at the matching discrete position (T = 1000 convention)

# the classes are the registered components: their signatures are the parameter schemas (bench.registry)
Beta = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
PositiveOrAuto = Positive | Literal["auto"]


def respace(T: int, N: int, spacing: str) -> np.ndarray:
    """N timestep indices (1-based, decreasing) out of 1..T.

    In 0-based diffusers terms: ``leading`` = arange(N) * (T // N); ``trailing`` =
    round(arange(T, 0, -T / N)) - 1; ``linspace`` = round(linspace(0, T - 1, N)). We add 1.
    """
    if not 1 <= N <= T:
        raise ValueError(f"cannot respace {T} timesteps to {N} steps (need 1 <= steps <= {T})")
    if spacing == "leading":
        idx = np.arange(N) * (T // N)
    elif spacing == "trailing":
        idx = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    elif spacing == "linspace":
        idx = np.round(np.linspace(0, T - 1, N)).astype(np.int64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}: use leading, trailing or linspace")
    idx = np.unique(idx)  # sorted ascending, no repeats
    return (idx + 1)[::-1].copy()


class VPSchedule(abc.ABC):
    """Base of variance-preserving schedules."""

    kind = "vp"
    name = "vp"

    @abc.abstractmethod
    def betas(self, T: int) -> np.ndarray:
        """beta_1..beta_T of the T-level discrete schedule (float64)."""

    def alpha_bars(self, T: int) -> np.ndarray:
        """alpha_bar_1..alpha_bar_T (float64)."""
        return np.cumprod(1.0 - self.betas(T))

    @abc.abstractmethod
    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar(t) of the continuous-time schedule, t in [0, 1]."""

    @abc.abstractmethod
    def dlog_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """d log alpha_bar / dt (= -beta(t))."""

    def params(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.params()}


class Linear(VPSchedule):
    """beta = linspace(s beta_min, s beta_max, T), s = 1000 / T if ``rescale`` (improved-diffusion's
    generalisation; s = 1 at T = 1000, Ho et al.). Continuous: beta(t) = T0 (beta_min + t (beta_max -
    beta_min)), log alpha_bar(t) = -T0 (beta_min t + (beta_max - beta_min) t^2 / 2) (2.4.68)."""

    name = "linear"

    def __init__(self, beta_min: Beta = 1e-4, beta_max: Beta = 0.02, rescale: bool = True):
        if not 0 < beta_min < beta_max < 1:
            raise ValueError(f"linear schedule needs 0 < beta_min < beta_max < 1, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.rescale = float(beta_min), float(beta_max), bool(rescale)

    def betas(self, T: int) -> np.ndarray:
        s = 1000.0 / T if self.rescale else 1.0
        b = np.linspace(s * self.beta_min, s * self.beta_max, T, dtype=np.float64)
        if b.max() >= 1:
            raise ValueError(f"linear schedule: beta reaches {b.max():.3g} >= 1 at T = {T}")
        return b

    def log_alpha_bar(self, t):
        return -T0 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2)

    def dlog_alpha_bar(self, t):
        return -T0 * (self.beta_min + (self.beta_max - self.beta_min) * t)

    def params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "rescale": self.rescale}


class Quadratic(Linear):
    """beta = linspace(sqrt(s beta_min), sqrt(s beta_max), T)^2 (community definition; ddpm-basics
    section 5). Continuous: beta(t) = T0 (a + t (b - a))^2, a = sqrt(beta_min), b = sqrt(beta_max),
    int_0^t beta = T0 ((a + t (b - a))^3 - a^3) / (3 (b - a))."""

    name = "quadratic"

    def betas(self, T: int) -> np.ndarray:
        s = 1000.0 / T if self.rescale else 1.0
        return np.linspace(math.sqrt(s * self.beta_min), math.sqrt(s * self.beta_max), T, dtype=np.float64) ** 2

    def log_alpha_bar(self, t):
        a, b = math.sqrt(self.beta_min), math.sqrt(self.beta_max)
        return -T0 * ((a + t * (b - a)) ** 3 - a ** 3) / (3 * (b - a))

    def dlog_alpha_bar(self, t):
        a, b = math.sqrt(self.beta_min), math.sqrt(self.beta_max)
        return -T0 * (a + t * (b - a)) ** 2


class Sigmoid(Linear):
    """beta = sigmoid(linspace(-r, r, T)) (s beta_max - s beta_min) + s beta_min, r = ``range``
    (community definition; ddpm-basics section 5). Continuous: beta(t) = T0 (beta_min + (beta_max -
    beta_min) sigmoid(2 r t - r)), integrated in closed form with softplus."""

    name = "sigmoid"

    def __init__(self, beta_min: Beta = 1e-4, beta_max: Beta = 0.02, range: Positive = 6.0,  # noqa: A002
                 rescale: bool = True):
        super().__init__(beta_min, beta_max, rescale)
        if range <= 0:
            raise ValueError("sigmoid schedule: range must be > 0")
        self.range = float(range)

    def betas(self, T: int) -> np.ndarray:
        s = 1000.0 / T if self.rescale else 1.0
        x = np.linspace(-self.range, self.range, T, dtype=np.float64)
        return s * (1 / (1 + np.exp(-x)) * (self.beta_max - self.beta_min) + self.beta_min)

    def log_alpha_bar(self, t):
        r, db = self.range, self.beta_max - self.beta_min
        sp = torch.nn.functional.softplus
        return -T0 * (self.beta_min * t + db * (sp(2 * r * t - r) - sp(torch.tensor(-r, dtype=t.dtype))) / (2 * r))

    def dlog_alpha_bar(self, t):
        return -T0 * (self.beta_min + (self.beta_max - self.beta_min) * torch.sigmoid(2 * self.range * t - self.range))

    def params(self):
        return {**super().params(), "range": self.range}


class Cosine(VPSchedule):
    """Nichol & Dhariwal: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2);
    discrete beta_i = min(1 - alpha_bar(i/T) / alpha_bar((i-1)/T), max_beta) (ddpm-basics section 5).
    The continuous form is floored at alpha_bar >= ``min_alpha_bar`` (f(1) = 0 would make
    log alpha_bar infinite); there beta(t) = 0."""

    name = "cosine"

    def __init__(self, s: Annotated[float, Field(ge=0, lt=1)] = 0.008, max_beta: Beta = 0.999,
                 min_alpha_bar: Annotated[float, Field(gt=0, lt=1e-2)] = 1e-8):
        if not 0 < max_beta < 1:
            raise ValueError("cosine schedule: max_beta must be in (0, 1)")
        if s < 0:
            raise ValueError("cosine schedule: s must be >= 0")
        self.s, self.max_beta, self.min_alpha_bar = float(s), float(max_beta), float(min_alpha_bar)

    def _f(self, t):
        return np.cos((t + self.s) / (1 + self.s) * np.pi / 2) ** 2

    def betas(self, T: int) -> np.ndarray:
        i = np.arange(T, dtype=np.float64)
        return np.minimum(1 - self._f((i + 1) / T) / self._f(i / T), self.max_beta)

    def _u(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def log_alpha_bar(self, t):
        u = self._u(t)
        raw = 2 * torch.log(torch.cos(u).clamp_min(1e-300)) - math.log(math.cos(self._u(0.0)) ** 2)
        return raw.clamp_min(math.log(self.min_alpha_bar))

    def dlog_alpha_bar(self, t):
        u = self._u(t)
        d = -2 * torch.tan(u) * (math.pi / 2) / (1 + self.s)
        return torch.where(self.log_alpha_bar(t) <= math.log(self.min_alpha_bar), torch.zeros_like(d), d)

    def params(self):
        return {"s": self.s, "max_beta": self.max_beta, "min_alpha_bar": self.min_alpha_bar}


class VESchedule(abc.ABC):
    """Base of variance-exploding schedules: sigma(t) increasing from sigma_min (t=0) to sigma_max (t=1)."""

    kind = "ve"
    name = "ve"

    def __init__(self, sigma_min: Positive = 0.01, sigma_max: PositiveOrAuto = "auto"):
        if sigma_min <= 0:
            raise ValueError(f"{self.name}: sigma_min must be > 0")
        if sigma_max != "auto" and float(sigma_max) <= sigma_min:
            raise ValueError(f"{self.name}: sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
        self.sigma_min = float(sigma_min)
        self.sigma_max = sigma_max if sigma_max == "auto" else float(sigma_max)
        self.fitted: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return self.sigma_max != "auto"

    def fit(self, data: torch.Tensor, noise: Any, max_points: int = 2000) -> None:
        """Resolve ``sigma_max="auto"``: sigma_1 = max_{i,j} ||sqrt(Sigma)^-1 (x_i - x_j)||
        (section 4.2.1; Song & Ermon 2020 technique 1), over at most ``max_points`` training points
        (the first ones: deterministic)."""
        if self.ready:
            return
        dist = max_pairwise_distance(data[:max_points], noise)
        if dist <= self.sigma_min:
            raise ValueError(f"{self.name}: the data's maximum pairwise distance {dist:.3g} is not above sigma_min")
        self.sigma_max = dist
        self.fitted = {"sigma_max_rule": "max pairwise distance in the Sigma^-1 metric (section 4.2.1)",
                       "sigma_max_points": int(min(len(data), max_points))}

    def _check(self) -> None:
        if not self.ready:
            raise RuntimeError(f"{self.name}: sigma_max='auto' must be fitted to data first (call fit)")

    def sigmas(self, L: int) -> np.ndarray:
        """sigma_1 < ... < sigma_L at t_i = (i - 1) / (L - 1)."""
        self._check()
        t = torch.linspace(0, 1, L, dtype=torch.float64)
        return self.log_sigma(t).exp().numpy()

    @abc.abstractmethod
    def log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """log sigma(t), t in [0, 1] (sigma(0) = sigma_min, sigma(1) = sigma_max)."""

    @abc.abstractmethod
    def dlog_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """d log sigma / dt."""

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, **self.fitted}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.params()}


class Geometric(VESchedule):
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t: the SMLD geometric sequence, ratio
    gamma = (sigma_max / sigma_min)^(1 / (L - 1)) between neighbouring levels (section 2, 4.2.2)."""

    name = "geometric"

    def log_sigma(self, t):
        self._check()
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def dlog_sigma(self, t):
        self._check()
        return torch.full_like(t, math.log(self.sigma_max / self.sigma_min))

    def ratio(self, L: int) -> float:
        self._check()
        return (self.sigma_max / self.sigma_min) ** (1.0 / (L - 1))


class Karras(VESchedule):
    """Karras et al. (EDM) spacing: sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) -
    sigma_min^(1/rho)))^rho, rho = 7."""

    name = "karras"

    def __init__(self, sigma_min: Positive = 0.01, sigma_max: PositiveOrAuto = "auto", rho: Positive = 7.0):
        super().__init__(sigma_min, sigma_max)
        if rho <= 0:
            raise ValueError("karras: rho must be > 0")
        self.rho = float(rho)

    def _base(self, t):
        a, b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return a + t * (b - a), b - a

    def log_sigma(self, t):
        self._check()
        base, _ = self._base(t)
        return self.rho * torch.log(base)

    def dlog_sigma(self, t):
        self._check()
        base, slope = self._base(t)
        return self.rho * slope / base

    def params(self):
        return {**super().params(), "rho": self.rho}


def max_pairwise_distance(x: torch.Tensor, noise: Any, chunk: int = 512) -> float:
    """max_{i,j} ||sqrt(Sigma)^-1 (x_i - x_j)||_2 over the rows of ``x`` (section 4.2.1)."""
    w = noise.inv_sqrt(x.to(torch.float64)).flatten(1)
    best = 0.0
    for lo in range(0, len(w), chunk):
        d = torch.cdist(w[lo:lo + chunk], w)
        best = max(best, float(d.max()))
    return best
