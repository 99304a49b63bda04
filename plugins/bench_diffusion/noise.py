"""Noise models: the covariance Sigma of the forward noise (diffusion-math.md section 4, section 5).

Every process formula injects noise as ``sqrt(Sigma) z`` and converts scores and noise with
``sqrt(Sigma)^-1`` (section 4.3, "one-line rule"), so a noise model is five linear operators on
batches ``(B, *shape)`` plus ``log det Sigma``:

    sample(rng) = sqrt(Sigma) z,  z = rng.randn(*shape)
    sqrt(x)     = sqrt(Sigma) x          (the *symmetric* root, E15)
    inv_sqrt(x) = sqrt(Sigma)^-1 x
    cov(x)      = Sigma x
    inv_cov(x)  = Sigma^-1 x
    logdet()    = log det Sigma

``isotropic`` returns its input unchanged (no arithmetic at all), so a non-isotropic code path run
with it is bit-for-bit the isotropic one. ``gff`` is diagonal in Fourier space (section 5.4), every
operation O(N log N) and never a dense matrix. ``anisotropic`` / ``diagonal`` are dense / diagonal
covariances for low-dimensional point data (symmetric root from ``eigh``).
"""
from __future__ import annotations

import abc
import math
from typing import Annotated, Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field

from bench.types import OmitAtDefault


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def data_shape(context: Any, shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The sample shape a noise model acts on: ``shape`` if given, else ``context.data.shape``."""
    if shape is not None:
        return tuple(int(s) for s in shape)
    data = getattr(context, "data", None)
    if data is None:
        raise ValueError("a noise model needs the data shape: build it with a context whose .data is set")
    return tuple(int(s) for s in data.shape)


class NoiseModel(abc.ABC):
    """Base class: ``sample`` and the Gaussian log-density from the five operators."""

    name = "noise"

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self.dim = _prod(self.shape)

    def sample(self, rng: Any) -> torch.Tensor:
        """sqrt(Sigma) z with z ~ N(0, I) from ``rng.randn`` (a PerSampleRNG or BatchRNG)."""
        return self.sqrt(rng.randn(*self.shape))

    def quad(self, x: torch.Tensor) -> torch.Tensor:
        """x^T Sigma^-1 x per sample (B,)."""
        return (x * self.inv_cov(x)).flatten(1).sum(1)

    def log_prob(self, x: torch.Tensor, scale2: float = 1.0) -> torch.Tensor:
        """log N(x; 0, scale2 * Sigma) per sample."""
        return -0.5 * (self.quad(x) / scale2 + self.dim * math.log(2 * math.pi * scale2) + self.logdet())

    def variances(self) -> torch.Tensor:
        """diag(Sigma) with the sample's shape (float64)."""
        return torch.diagonal(dense_matrix(self.cov, self.shape)).reshape(self.shape)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dim": self.dim, "logdet": self.logdet()}

    @abc.abstractmethod
    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(Sigma) x (the symmetric root) for a batch x of the sample shape."""

    @abc.abstractmethod
    def inv_sqrt(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(Sigma)^-1 x."""

    @abc.abstractmethod
    def cov(self, x: torch.Tensor) -> torch.Tensor:
        """Sigma x."""

    @abc.abstractmethod
    def inv_cov(self, x: torch.Tensor) -> torch.Tensor:
        """Sigma^-1 x."""

    @abc.abstractmethod
    def logdet(self) -> float:
        """log det Sigma."""


class PowerNoise(NoiseModel):
    """A noise model whose operators are powers of Sigma: ``_apply(x, p)`` returns Sigma^p x and
    ``_logdet`` holds log det Sigma. sqrt = Sigma^(1/2), inv_sqrt = Sigma^(-1/2), cov = Sigma,
    inv_cov = Sigma^-1."""

    _logdet: float

    @abc.abstractmethod
    def _apply(self, x: torch.Tensor, power: float) -> torch.Tensor:
        """Sigma^power x for a batch x of the sample shape."""

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, 0.5)

    def inv_sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, -0.5)

    def cov(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, 1.0)

    def inv_cov(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, -1.0)

    def logdet(self) -> float:
        return self._logdet


class Isotropic(NoiseModel):
    """Sigma = I: every operator is the identity (returns its argument), log det = 0."""

    name = "isotropic"

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inv_sqrt(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cov(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inv_cov(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def quad(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).flatten(1).sum(1)

    def logdet(self) -> float:
        return 0.0

    def variances(self) -> torch.Tensor:
        return torch.ones(self.shape, dtype=torch.float64)


def gff_filter(size: Sequence[int], gamma: float, dc: float) -> np.ndarray:
    """The normalised GFF filter h over a 1-D, 2-D or 3-D frequency grid (diffusion-math.md section 5.4).

    ``|k|`` uses integer frequencies (``fftfreq(n) * n``, symmetric under k -> -k); the DC term,
    undefined in |k|^-gamma (E14), is set to ``|k| = dc > 0`` so Sigma stays positive definite;
    ``h = |k|^-gamma / sqrt(mean(|k|^-2 gamma))`` so that diag(Sigma) = mean(h^2) = 1 exactly (E12).
    """
    axes = [np.fft.fftfreq(n) * n for n in size]
    grids = np.meshgrid(*axes, indexing="ij")
    kabs = np.sqrt(sum(g ** 2 for g in grids))
    kabs.flat[0] = dc
    h = kabs ** (-gamma)
    return h / np.sqrt(np.mean(h ** 2))


class GFF(PowerNoise):
    """Gaussian free field noise: Sigma = W^-1 diag(h^2) W, with h the filter of :func:`gff_filter`
    (thesis section 6.5; diffusion-math.md section 5). Power spectrum E|FFT(g)|^2 = N h^2 ~ |k|^-2 gamma.

    Fields (``field``): with ``space`` (default), images ``(C, H, W)`` and video ``(T, C, H, W)`` are
    filtered over the last two axes, independently per channel (and frame); vectors ``(D,)`` are
    treated as a 1-D periodic signal. With ``space_time`` (video only), each channel of a clip is one
    3-D field over (T, H, W): h is the filter of :func:`gff_filter` on the 3-D frequency grid
    |k|^2 = k_t^2 + k_h^2 + k_w^2, so the noise is correlated across frames as across pixels (the
    clip is periodic in time as the frame is in space). Operators use ``rfftn``/``irfftn`` (h is
    symmetric, so the result is real), O(N log N). ``log det Sigma = (number of fields) * sum_k log h_k^2``.
    """

    name = "gff"

    def __init__(self, shape: Sequence[int], gamma: Annotated[float, Field(ge=0, le=4)] = 1.0,
                 dc: Annotated[float, Field(gt=0)] = 1.0, field: Annotated[Literal["space", "space_time"], OmitAtDefault()] = "space"):
        super().__init__(shape)
        if dc <= 0:
            raise ValueError(f"gff: dc must be > 0 (the DC term |k|=dc keeps Sigma invertible, E14); got {dc}")
        if gamma < 0:
            raise ValueError(f"gff: gamma must be >= 0, got {gamma}")
        self.gamma, self.dc = float(gamma), float(dc)
        if field == "space_time" and len(self.shape) != 4:
            raise ValueError(f"gff: field space_time needs video samples (frames, C, H, W), got shape {self.shape}")
        self.space_time = field == "space_time"
        if self.space_time:
            self.field = (self.shape[0], *self.shape[-2:])
        else:
            self.field = self.shape[-1:] if len(self.shape) == 1 else self.shape[-2:]
        if min(self.field) < 2:
            raise ValueError(f"gff: the field {self.field} of shape {self.shape} is too small")
        h = gff_filter(self.field, self.gamma, self.dc)
        self.n_fields = self.dim // _prod(self.field)
        self._logdet = float(self.n_fields * np.sum(np.log(h ** 2)))
        half = h[..., : self.field[-1] // 2 + 1]  # rfft keeps the non-negative last-axis frequencies
        self._h = torch.from_numpy(np.ascontiguousarray(half))
        self.h_full = h

    def _apply(self, x: torch.Tensor, power: float) -> torch.Tensor:
        h = self._h.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        filt = h ** (2 * power)  # h is the spectrum of sqrt(Sigma)
        if len(self.field) == 1:
            return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * filt, n=self.field[0], dim=-1)
        if self.space_time:  # (B, T, C, H, W) -> (B, C, T, H, W): one 3-D field per channel
            y = x.movedim(-4, -3)
            y = torch.fft.irfftn(torch.fft.rfftn(y, dim=(-3, -2, -1)) * filt, s=self.field, dim=(-3, -2, -1))
            return y.movedim(-3, -4)
        return torch.fft.irfft2(torch.fft.rfft2(x, dim=(-2, -1)) * filt, s=self.field, dim=(-2, -1))

    def variances(self) -> torch.Tensor:
        return torch.full(self.shape, float(np.mean(self.h_full ** 2)), dtype=torch.float64)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gamma": self.gamma, "dc": self.dc, "normalisation": "diag(Sigma)=1",
                "field_axes": "last" if len(self.field) == 1 else ("frames and the last two" if self.space_time
                                                                   else "last two"), "per_channel": True,
                "condition_number": float((self.h_full.max() / self.h_full.min()) ** 2)}


class Dense(PowerNoise):
    """A dense covariance over the flattened sample (point data): symmetric root from ``eigh`` (E15)."""

    name = "anisotropic"

    def __init__(self, shape: Sequence[int], cov: np.ndarray):
        super().__init__(shape)
        cov = np.asarray(cov, dtype=np.float64)
        if cov.shape != (self.dim, self.dim):
            raise ValueError(f"{self.name}: covariance must be {self.dim}x{self.dim} for data of shape "
                             f"{self.shape}, got {cov.shape}")
        if not np.allclose(cov, cov.T, atol=1e-10):
            raise ValueError(f"{self.name}: covariance is not symmetric")
        lam, vec = np.linalg.eigh(cov)
        if lam.min() <= 0:
            raise ValueError(f"{self.name}: covariance must be positive definite (smallest eigenvalue {lam.min():.3g})")
        self.matrix = cov
        self._mats = {p: torch.from_numpy((vec * lam ** p) @ vec.T) for p in (0.5, -0.5, 1.0, -1.0)}
        self._logdet = float(np.sum(np.log(lam)))

    def _apply(self, x: torch.Tensor, power: float) -> torch.Tensor:
        m = self._mats[power].to(device=x.device, dtype=x.dtype)
        return (x.reshape(x.shape[0], self.dim) @ m).reshape(x.shape)  # m symmetric: x m = (m x^T)^T

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cov": self.matrix.tolist() if self.dim <= 16 else "dense"}


class Diagonal(PowerNoise):
    """Sigma = diag(v): elementwise operators."""

    name = "diagonal"

    def __init__(self, shape: Sequence[int], variances: Sequence[float]):
        super().__init__(shape)
        v = np.asarray(variances, dtype=np.float64).reshape(-1)
        if v.size == 1:
            v = np.full(self.dim, float(v[0]))
        if v.size != self.dim:
            raise ValueError(f"diagonal: {v.size} variances given for data of dimension {self.dim}")
        if (v <= 0).any():
            raise ValueError("diagonal: variances must be > 0")
        self.variances = v
        self._v = torch.from_numpy(v.reshape(self.shape))
        self._logdet = float(np.sum(np.log(v)))

    def _apply(self, x, power):
        return x * self._v.to(device=x.device, dtype=x.dtype) ** power

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "variances": self.variances.tolist() if self.dim <= 16 else "diag"}


def dense_matrix(op, shape: Sequence[int]) -> torch.Tensor:
    """The D x D matrix of a linear operator on ``(B, *shape)`` batches (float64), column j = op(e_j).
    For tests and for the oracle, which needs Sigma densely; no noise model uses it internally."""
    d = _prod(shape)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return op(eye).reshape(d, d).T.contiguous()


# ---------------------------------------------------------------- factories (registered)

def anisotropic(cov: list[list[float]] | None = None,
                rho: Annotated[float, Field(gt=-1, lt=1)] = 0.5, context=None) -> Dense:
    """A dense covariance: ``cov`` (D x D over the flattened sample), or by default the equicorrelated
    Sigma = (1 - rho) I + rho 1 1^T (unit variances)."""
    shape = data_shape(context)
    d = _prod(shape)
    if cov is None:
        if d > 1 and rho <= -1.0 / (d - 1):
            raise ValueError(f"anisotropic: rho must be > {-1.0 / (d - 1):.4g} in dimension {d}")
        cov = (1 - rho) * np.eye(d) + rho * np.ones((d, d))
    return Dense(shape, np.asarray(cov, dtype=np.float64))


def diagonal(variances: list[float], context=None) -> Diagonal:
    """Sigma = diag(variances) (one per flattened dimension, or a single value for all)."""
    return Diagonal(data_shape(context), variances)
