"""The oracle family: the exact noise prediction (hence score) of Gaussian / Gaussian-mixture data
under any process and noise model (diffusion-math.md section 9 items 5, 6, 12). No training.

Data sum_k w_k N(m_k, S_k). In whitened coordinates w = sqrt(Sigma)^-1 x the forward process is
w_t = alpha W_0 + sigma eps with W_0 = sqrt(Sigma)^-1 x_0, so component k has

    w_t ~ N(alpha mu_k, alpha^2 B_k + sigma^2 I),  mu_k = sqrt(Sigma)^-1 m_k,  B_k = sqrt(Sigma)^-1 S_k sqrt(Sigma)^-1.

With B_k = U_k diag(lambda_k) U_k^T (eigh, once) and y_k = U_k^T (w - alpha mu_k),

    grad_w log p_t(w) = -sum_k r_k(w) U_k (y_k / (alpha^2 lambda_k + sigma^2)),
    eps*(x, t) = E[eps | x_t] = -sigma grad_w log p_t(w)        (Tweedie in whitened coordinates),

with responsibilities r_k from log w_k - 1/2 sum(y_k^2 / d_k) - 1/2 sum(log d_k). The score in x is
s = -sqrt(Sigma)^-1 eps* / sigma (6.2.4 / 6.3.6), exactly the family interface's conversion.

With ``class_conditional: true`` the oracles are class-conditional with one class per mixture
component: label k conditions on component k (its responsibilities are r = e_k: the exact eps, velocity
or denoiser of the single Gaussian N(m_k, S_k)), the null class K is the whole mixture. Classifier-free
guidance (bench_diffusion.guidance) then has the closed form (1 + w) eps*_k - w eps*_mixture.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .edm import EDMFamily, build_sigma_process
from .conditioning import ClassConditional
from .families import DiffusionFamily, Spec, build_process
from .flow_matching import FlowMatchingFamily, build_path, path_rates
from .noise import dense_matrix
from .processes import _bcast, _t64


def mixture_from_params(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), means (K, D), covs (K, D, D)) from ``DataInfo.params``."""
    kind = params.get("kind")
    if kind == "gaussian":
        mean = np.asarray(params["mean"], np.float64).reshape(1, -1)
        cov = np.asarray(params["cov"], np.float64)[None]
        return np.ones(1), mean, cov
    if kind == "gmm":
        w = np.asarray(params["weights"], np.float64)
        return w / w.sum(), np.asarray(params["means"], np.float64), np.asarray(params["covs"], np.float64)
    raise ValueError("the oracle needs ground truth in DataInfo.params ({'kind': 'gaussian', 'mean', 'cov'} or "
                     "{'kind': 'gmm', 'weights', 'means', 'covs'}): use the datasets gaussian, gmm, "
                     f"toy2d/8gaussians or gaussian_image; got params kind {kind!r}")


class MixtureEps(nn.Module):
    """eps*(x; alpha, sigma) of a Gaussian mixture (see the module docstring). ``alpha``/``sigma``
    are floats or (B,) tensors. Its forward calls are the oracle's NFE."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covs: np.ndarray, noise: Any, shape):
        super().__init__()
        self.noise, self.shape = noise, tuple(shape)
        d = int(np.prod(self.shape))
        if means.shape[1] != d or covs.shape[1:] != (d, d):
            raise ValueError(f"oracle: data parameters of dimension {means.shape[1]} do not match the data shape {self.shape}")
        ri = dense_matrix(noise.inv_sqrt, self.shape).numpy()
        us, lams, mus = [], [], []
        for m, s in zip(means, covs):
            b = ri @ s @ ri.T
            lam, u = np.linalg.eigh(0.5 * (b + b.T))
            us.append(u)
            lams.append(np.clip(lam, 0.0, None))
            mus.append(ri @ m)
        self.register_buffer("logw", torch.tensor(np.log(weights), dtype=torch.float64))
        self.register_buffer("u", torch.tensor(np.stack(us), dtype=torch.float64))      # (K, D, D)
        self.register_buffer("lam", torch.tensor(np.stack(lams), dtype=torch.float64))  # (K, D)
        self.register_buffer("mu", torch.tensor(np.stack(mus), dtype=torch.float64))    # (K, D)

    def responsibilities(self, logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """r_k(w) = softmax(logits) (B, K); rows with a label y < K conditioned on that component (e_y)."""
        r = torch.softmax(logits, dim=1)
        if y is None:
            return r
        y = y.to(r.device).long()
        real = y < r.shape[1]
        onehot = torch.nn.functional.one_hot(y.clamp_max(r.shape[1] - 1), r.shape[1]).to(r)
        return torch.where(real[:, None], onehot, r)

    def forward(self, x: torch.Tensor, alpha: Any, sigma: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        w = self.noise.inv_sqrt(x.to(torch.float64)).reshape(b, -1)
        a, s = _t64(alpha).to(w.device).reshape(-1, 1, 1), _t64(sigma).to(w.device).reshape(-1, 1, 1)
        y = torch.einsum("bd,kde->bke", w, self.u) - a * torch.einsum("kd,kde->ke", self.mu, self.u)[None]
        dvar = a * a * self.lam[None] + s * s                                 # (B or 1, K, D)
        logn = -0.5 * (y * y / dvar).sum(-1) - 0.5 * torch.log(dvar).sum(-1)  # (B, K)
        r = self.responsibilities(self.logw[None] + logn, labels)
        g = torch.einsum("bke,kde->bkd", y / dvar, self.u)                    # U_k (y_k / d_k) = C_k^-1 (w - alpha mu_k)
        eps = s.reshape(-1, 1) * (r[..., None] * g).sum(1)
        return eps.reshape(b, *self.shape).to(x.dtype)


class OracleFamily(DiffusionFamily):
    """Exact eps* under ``process`` (VP or VE, discrete or continuous, any noise). trainable = False."""

    trainable = False

    def __init__(self, process, weights, means, covs, **kw):
        super().__init__(process, None, name="oracle", **kw)
        self.oracle = MixtureEps(weights, means, covs, process.noise, process.shape)
        self.mixture = (weights, means, covs)

    def nfe_modules(self) -> list[nn.Module]:
        return [self.oracle]

    def raw(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        a, s = self.process.alpha_sigma(t)
        return self.network(lambda y=None: self.oracle(x, a, s, y), x, s)

    def loss(self, x0: torch.Tensor, rng: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The optimal value of the eps loss (L_a) on this batch: the loss floor (section 9 item 8)."""
        with torch.no_grad():
            return super().loss(x0, rng, labels)

    def data_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p_data(x) (nats per sample), for tests and reference numbers."""
        w, m, c = self.mixture
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        parts = []
        for wk, mk, ck in zip(w, m, c):
            dist = torch.distributions.MultivariateNormal(torch.tensor(mk), covariance_matrix=torch.tensor(ck))
            parts.append(math.log(wk) + dist.log_prob(flat))
        return torch.logsumexp(torch.stack(parts, 1), 1)

    def describe(self) -> dict[str, Any]:
        w, m, _ = self.mixture
        return {**super().describe(), "oracle": {"components": int(len(w)), "dim": int(m.shape[1])}}


def oracle(process: Literal["vp", "ve"] = "vp", noise: Spec = "isotropic", schedule: Spec = None,
           T: Annotated[int, Field(ge=2, le=100000)] | None = 1000,
           t_min: Annotated[float, Field(ge=0, lt=0.5)] | None = None,
           class_conditional: ClassConditional = False, context=None) -> OracleFamily:
    """The exact score of the dataset's ground truth (``DataInfo.params``) under a VP (ddpm-like,
    default schedule ``linear``) or VE (smld-like, default ``geometric``) process; ``T`` discrete
    levels, or ``T: null`` for continuous time."""
    if context is None or getattr(context, "data", None) is None:
        raise ValueError("the oracle needs a build context with the dataset's info")
    weights, means, covs = mixture_from_params(context.data.params or {})
    if schedule is None:
        schedule = "linear" if process == "vp" else "geometric"
    proc = build_process(process, noise, schedule, T, context, t_min=t_min)
    info = context.data
    return OracleFamily(proc, weights, means, covs, value_range=info.value_range, levels=info.levels,
                        network_spec={"name": "oracle"}, **_classes(class_conditional, weights))


# ---------------------------------------------------------------- flow matching: the exact velocity

class MixtureVelocity(MixtureEps):
    """The exact flow-matching velocity u*(x, t) = E[-(alpha' x_0 + sigma' z) | x_t = x] of a
    Gaussian mixture, z = sqrt(Sigma) eps. In whitened coordinates (the class docstring of
    :class:`MixtureEps`), per component k, with y_k = U_k^T (w - alpha mu_k) and d_k = alpha^2 lambda_k + sigma^2:

        E[W_0 | w, k] = mu_k + U_k (alpha lambda_k / d_k) y_k,   E[eps | w, k] = U_k (sigma / d_k) y_k,

    so u*_w = -sum_k r_k(w) [alpha' mu_k + U_k ((alpha' alpha lambda_k + sigma' sigma) / d_k) y_k] and
    u* = sqrt(Sigma) u*_w. Finite at alpha = 0 (t = 1 of the linear path) and at sigma = 0 for a
    non-degenerate mixture."""

    def forward(self, x: torch.Tensor, alpha: Any, sigma: Any, d_alpha: Any, d_sigma: Any,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        w = self.noise.inv_sqrt(x.to(torch.float64)).reshape(b, -1)
        shape = (-1, 1, 1)
        a, s = _t64(alpha).to(w.device).reshape(shape), _t64(sigma).to(w.device).reshape(shape)
        da, ds = _t64(d_alpha).to(w.device).reshape(shape), _t64(d_sigma).to(w.device).reshape(shape)
        mu_u = torch.einsum("kd,kde->ke", self.mu, self.u)[None]             # U_k^T mu_k
        y = torch.einsum("bd,kde->bke", w, self.u) - a * mu_u
        dvar = a * a * self.lam[None] + s * s
        logn = -0.5 * (y * y / dvar).sum(-1) - 0.5 * torch.log(dvar).sum(-1)
        r = self.responsibilities(self.logw[None] + logn, labels)            # (B, K)
        coef = (da * a * self.lam[None] + ds * s) / dvar                      # (B or 1, K, D)
        in_eig = da * mu_u + coef * y                                         # U_k^T (per-component velocity)
        u_w = -torch.einsum("bke,kde->bd", r[..., None] * in_eig, self.u)
        return self.noise.sqrt(u_w.reshape(b, *self.shape)).to(x.dtype)


def _classes(class_conditional: bool, weights: np.ndarray) -> dict[str, Any]:
    """One class per mixture component when ``class_conditional`` (module docstring)."""
    return {"num_classes": len(weights)} if class_conditional else {}


def _oracle_data(context: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if context is None or getattr(context, "data", None) is None:
        raise ValueError("the oracle needs a build context with the dataset's info")
    return mixture_from_params(context.data.params or {})


class FlowMatchingOracle(FlowMatchingFamily):
    """Exact velocity u* of Gaussian / GMM data on the linear or VP path, any noise. trainable = False."""

    trainable = False

    def __init__(self, process, weights, means, covs, **kw):
        super().__init__(process, None, name="oracle_fm", **kw)
        self.oracle = MixtureVelocity(weights, means, covs, process.noise, process.shape)
        self.mixture = (weights, means, covs)
        self.provides = self.provides | {"oracle"}

    def nfe_modules(self) -> list[nn.Module]:
        return [self.oracle]

    def raw(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        a, s = self.process.alpha_sigma(t)
        da, ds = path_rates(self.process, t)
        return self.network(lambda y=None: self.oracle(x, a, s, da, ds, y), x, s)

    def loss(self, x0: torch.Tensor, rng: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The flow-matching loss of the exact velocity on this batch: the loss floor."""
        with torch.no_grad():
            return super().loss(x0, rng, labels)

    data_log_prob = OracleFamily.data_log_prob

    def describe(self) -> dict[str, Any]:
        w, m, _ = self.mixture
        return {**super().describe(), "oracle": {"components": int(len(w)), "dim": int(m.shape[1])}}


def oracle_fm(path: Literal["linear", "vp"] = "linear", noise: Spec = "isotropic", schedule: Spec = None,
              t_min: Annotated[float, Field(ge=0, lt=0.5)] | None = None,
              class_conditional: ClassConditional = False, context=None) -> FlowMatchingOracle:
    """The exact flow-matching velocity of the dataset's ground truth (``DataInfo.params``) on the
    ``linear`` path or the continuous ``vp`` path (default schedule ``linear``)."""
    weights, means, covs = _oracle_data(context)
    proc = build_path(path, noise, schedule, context, t_min)
    info = context.data
    return FlowMatchingOracle(proc, weights, means, covs, value_range=info.value_range, levels=info.levels,
                              network_spec={"name": "oracle_fm"}, **_classes(class_conditional, weights))


# ---------------------------------------------------------------- EDM: the exact denoiser

class EDMOracle(EDMFamily):
    """Exact denoiser of Gaussian / GMM data on the sigma process x = y + s sqrt(Sigma) n (any noise):
    D*(x; s) = E[y | x] = x - s sqrt(Sigma) eps*(x; alpha = 1, sigma = s) with eps* of
    :class:`MixtureEps` (Tweedie in whitened coordinates). trainable = False."""

    trainable = False

    def __init__(self, process, weights, means, covs, **kw):
        super().__init__(process, None, name="oracle_edm", **kw)
        self.oracle = MixtureEps(weights, means, covs, process.noise, process.shape)
        self.mixture = (weights, means, covs)
        self.provides = self.provides | {"oracle"}

    def nfe_modules(self) -> list[nn.Module]:
        return [self.oracle]

    def denoise(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        s = _t64(sigma)
        eps = self.network(lambda y=None: self.oracle(x, torch.ones_like(s), s, y), x, s)
        return x - _bcast(s, x) * self.noise.sqrt(eps)

    def loss(self, x0: torch.Tensor, rng: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The EDM loss of the exact denoiser on this batch: the loss floor."""
        with torch.no_grad():
            return super().loss(x0, rng, labels)

    data_log_prob = OracleFamily.data_log_prob

    def describe(self) -> dict[str, Any]:
        w, m, _ = self.mixture
        return {**super().describe(), "oracle": {"components": int(len(w)), "dim": int(m.shape[1])}}


def oracle_edm(noise: Spec = "isotropic", schedule: Spec = None, sigma_data: Annotated[float, Field(gt=0)] = 0.5,
               class_conditional: ClassConditional = False, context=None) -> EDMOracle:
    """The exact EDM denoiser of the dataset's ground truth on the sigma process (``schedule``
    default karras(0.002, 80, rho = 7); ``sigma_data`` only enters the loss floor's weighting)."""
    weights, means, covs = _oracle_data(context)
    proc = build_sigma_process(noise, schedule, context)
    info = context.data
    return EDMOracle(proc, weights, means, covs, sigma_data=sigma_data, value_range=info.value_range,
                     levels=info.levels, network_spec={"name": "oracle_edm"}, **_classes(class_conditional, weights))
