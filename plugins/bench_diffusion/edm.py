"""EDM (Karras et al. 2022) with Sigma-shaped noise (docs/diffusion.md "EDM").

The sigma process is the continuous VE process x = y + sigma sqrt(Sigma) n, n ~ N(0, I), with
sigma(t) from the ``karras`` schedule (default sigma_min = 0.002, sigma_max = 80, rho = 7: Karras
et al. eq. 5 at t = 1 - i / (N - 1)). The denoiser is preconditioned as in Karras et al. Table 1
and eq. 7:

    D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)),
    c_skip = s_d^2 / (s^2 + s_d^2),  c_out = s s_d / sqrt(s^2 + s_d^2),
    c_in = 1 / sqrt(s^2 + s_d^2),    c_noise = ln(s) / 4,

with s_d = ``sigma_data``; training draws ln s ~ N(P_mean, P_std^2) (P_mean = -1.2, P_std = 1.2)
and minimises lambda(s) |D(y + s sqrt(Sigma) n; s) - y|^2 with lambda(s) = (s^2 + s_d^2) / (s s_d)^2
(Table 1; eq. 2 and 8), a mean over the dimensions. With Sigma-shaped noise the per-dimension noise
variance is s^2 Sigma_dd, which is s^2 when diag(Sigma) = 1 (GFF, equicorrelated): the
coefficients keep their unit-variance meaning; for other Sigma they are the isotropic ones.

The family exposes ``denoise(x, s)`` (one network call) for the EDM samplers and, through
eps = sqrt(Sigma)^-1 (x - D) / s, the whole VE interface (eps, x0, score, pf_drift, likelihood).
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from .conditioning import ClassConditional, LabelDropout
from .families import DiffusionFamily, Spec, build_network, build_process, conditioning
from .processes import Process, _bcast, _t64

Positive = Annotated[float, Field(gt=0)]
KARRAS_EDM = {"name": "karras", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}


def edm_preconditioning(sigma: Any, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022 Table 1 at ``sigma`` (float64)."""
    s = _t64(sigma)
    s2, d2 = s * s, sigma_data * sigma_data
    root = torch.sqrt(s2 + d2)
    return d2 / (s2 + d2), s * sigma_data / root, 1.0 / root, torch.log(s) / 4


def edm_loss_weight(sigma: Any, sigma_data: float) -> torch.Tensor:
    """lambda(s) = (s^2 + s_d^2) / (s s_d)^2 (Table 1): 1 / c_out^2."""
    s = _t64(sigma)
    return (s * s + sigma_data ** 2) / (s * sigma_data) ** 2


class EDMFamily(DiffusionFamily):
    """A preconditioned denoiser on a sigma (VE) process (see the module docstring)."""

    def __init__(self, process: Process, net: nn.Module | None, *, name: str = "edm", sigma_data: float = 0.5,
                 P_mean: float = -1.2, P_std: float = 1.2, **kw: Any):
        if process.kind != "ve":
            raise ValueError("EDM needs a sigma (VE) process")
        super().__init__(process, net, name=name, **kw)
        self.sigma_data, self.P_mean, self.P_std = float(sigma_data), float(P_mean), float(P_std)
        self.prediction = self.weighting = "edm"
        self.provides = self.provides | {"edm"}

    def sigma_range(self) -> tuple[float, float]:
        return self.process.sigma(self.process.t_min), self.process.sigma(self.process.t_max)

    def denoise(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """D(x; s) = c_skip x + c_out F(c_in x, c_noise): one network call (two when guided, on F:
        bench_diffusion.guidance); ``sigma`` a float or (B,)."""
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        noise_in = (c_noise.expand(x.shape[0]) if c_noise.dim() == 0 else c_noise).float().to(x.device)
        x_in = _bcast(c_in, x) * x
        out = self.network(lambda **y: self.net(x_in, noise_in, **y), x, _t64(sigma))
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * out

    def eps(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """eps_hat = sqrt(Sigma)^-1 (x - D(x; sigma(t))) / sigma(t)."""
        s = self.process.alpha_sigma(t)[1]
        return self.noise.inv_sqrt((x - self.denoise(x, s)) / _bcast(s, x))

    def sample_sigma(self, rng: Any) -> torch.Tensor:
        """ln s ~ N(P_mean, P_std^2), one per sample (float64)."""
        return torch.exp(self.P_mean + self.P_std * rng.randn(dtype=torch.float64).cpu())

    def denoising_loss(self, x0: torch.Tensor, rng: Any) -> torch.Tensor:
        """mean_b lambda(s_b) mean_d |D(y + s sqrt(Sigma) n; s) - y|^2 (module docstring)."""
        s = self.sample_sigma(rng)
        x = x0 + _bcast(s, x0) * self.noise.sqrt(rng.randn(*self.shape).to(x0))
        err = (self.denoise(x, s) - x0).pow(2).flatten(1).mean(1)
        return (edm_loss_weight(s, self.sigma_data).to(err) * err).mean()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma_data": self.sigma_data, "P_mean": self.P_mean, "P_std": self.P_std,
                "network_input_scaling": "c_in x, c_noise = ln(sigma) / 4 (Karras et al. 2022 Table 1)"}


def build_sigma_process(noise: Spec, schedule: Spec, context: Any) -> Process:
    """The continuous VE process on ``schedule`` (default: Karras with EDM's sigma range)."""
    return build_process("ve", noise, KARRAS_EDM if schedule is None else schedule, None, context)


def edm(noise: Spec = "isotropic", schedule: Spec = None, sigma_data: Positive = 0.5, P_mean: float = -1.2,
        P_std: Positive = 1.2, network: Spec = None, class_conditional: ClassConditional = False,
        label_dropout: LabelDropout = 0.1, context=None) -> EDMFamily:
    """EDM (Karras et al. 2022): preconditioned denoiser, log-normal sigma sampling, on the sigma
    process with Sigma-shaped ``noise``; ``schedule`` default karras(0.002, 80, rho = 7)."""
    process = build_sigma_process(noise, schedule, context)
    net, spec = build_network(network, context, class_conditional)
    info = context.data
    return EDMFamily(process, net, sigma_data=sigma_data, P_mean=P_mean, P_std=P_std,
                     value_range=info.value_range, levels=info.levels, network_spec=spec,
                     **conditioning(spec, label_dropout))


__all__ = ["EDMFamily", "edm", "edm_preconditioning", "edm_loss_weight", "build_sigma_process", "KARRAS_EDM"]
