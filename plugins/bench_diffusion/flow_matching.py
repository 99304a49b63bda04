"""Flow matching / rectified flow with Sigma-shaped source noise (docs/diffusion.md "Flow matching").

Bench's time runs from the data (t = 0) to the source noise (t = 1); a path is a process
x_t = alpha(t) x_0 + sigma(t) z with z = sqrt(Sigma) eps ~ N(0, Sigma) (any bench noise model):

- ``linear``: alpha = 1 - t, sigma = t (:class:`~bench_diffusion.processes.LinearProcess`): the
  conditional OT path of Lipman et al. 2023 (eq. 20-21 with sigma_min = 0) and the rectified flow of
  Liu et al. 2023 (eq. 1), whose time is tau = 1 - t (tau = 0 the noise, tau = 1 the data);
- ``vp``: the diffusion path alpha = sqrt(alpha_bar(t)), sigma = sqrt(1 - alpha_bar(t)) of a
  continuous VP schedule (Lipman et al. 2023 eq. 18-19).

The network predicts the velocity in generation time tau = 1 - t,

    u(x, t) = E[-(alpha'(t) x_0 + sigma'(t) z) | x_t = x]        (primes: d/dt),

which for the linear path is E[x_0 - z | x_t], the E[x1 - x0 | x_t] of the papers (x1 the data, x0
the noise). Training minimises the conditional flow matching loss (Lipman et al. 2023 eq. 9; eq. 23
for the linear path; Liu et al. 2023 eq. 1) |u_theta(x_t, t) - (-(alpha' x_0 + sigma' z))|^2 with
t ~ U[t_min, 1]. ``coupling: ot`` pairs each minibatch's data and noise by the exact assignment that
minimises sum_i |x_0,i - z_pi(i)|^2 (minibatch OT: Tong et al. 2023, Pooladian et al. 2023; scipy's
``linear_sum_assignment``); ``independent`` keeps the independent pairs.

Sampling integrates dx/dt = -u(x, t) from t = 1 to t_min; the likelihood is the same ODE's
instantaneous change of variables (:func:`bench_diffusion.likelihood.ode_nll`, through
:mod:`bench.ode`), with :meth:`FlowMatchingFamily.pf_drift` = -u. On the ``vp`` path the velocity
also gives eps: from x = alpha x_0 + sigma z and u = -(alpha' x_0 + sigma' z),

    sqrt(Sigma) eps_hat = (alpha u + alpha' x) / (alpha' sigma - alpha sigma'),

so every VP sampler (ddim, dpmpp_2m, pf_ode, ...) also runs on it.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .conditioning import ClassConditional, LabelDropout
from .families import DiffusionFamily, Spec, build_network, build_process, conditioning
from .processes import LinearProcess, Process, StraightPath, VPProcess, _bcast

Path = Literal["linear", "vp"]
Coupling = Literal["independent", "ot"]


def path_rates(process: Process, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(d alpha/dt, d sigma/dt) of the path at ``t`` (a float or a (B,) tensor), float64.
    VP: alpha' = 1/2 alpha dlog alpha_bar, sigma' = -1/2 alpha^2 dlog alpha_bar / sigma."""
    if isinstance(process, VPProcess):
        dlab = process.dlog_alpha_bar(t)
        a, s = process.alpha_sigma(t)
        return 0.5 * a * dlab, -0.5 * a * a * dlab / s
    if hasattr(process, "d_alpha_sigma"):
        return process.d_alpha_sigma(t)
    raise ValueError(f"flow matching has no velocity for a {process.kind!r} process (use the linear or vp path)")


def ot_pairing(x0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The permutation pi minimising sum_i |x0_i - z_pi(i)|^2 over the minibatch (exact, by
    scipy.optimize.linear_sum_assignment on the B x B squared-distance matrix)."""
    cost = torch.cdist(x0.flatten(1).double(), z.flatten(1).double()).pow(2).cpu().numpy()
    from scipy.optimize import linear_sum_assignment  # here, not at import: keeps `bench validate` light

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(z.device)


class FlowMatchingFamily(DiffusionFamily):
    """A velocity-prediction model on a path (see the module docstring). ``velocity(x, t)`` is ONE
    network call; ``pf_drift`` = -velocity; on the ``vp`` path also ``eps``/``x0``/``score``."""

    def __init__(self, process: Process, net: nn.Module | None, *, name: str = "flow_matching",
                 coupling: str = "independent", **kw: Any):
        super().__init__(process, net, name=name, **kw)
        if coupling not in ("independent", "ot"):
            raise ValueError(f"coupling must be independent or ot, got {coupling!r}")
        self.coupling = coupling
        self.prediction = self.weighting = "velocity"
        caps = {"flow_matching", "velocity", "likelihood", "continuous", process.kind}
        if process.kind == "vp":  # eps is a function of the velocity (module docstring)
            caps |= {"diffusion", "eps", "score", "x0"}
        self.provides = frozenset(caps)
        self.likelihood_methods = {"ode": "continuous"}

    def velocity(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """u(x, t) = E[-(alpha' x_0 + sigma' z) | x_t = x], the generation-time velocity."""
        return self.raw(x, t)

    def pf_drift(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """dx/dt = -u(x, t) (bench time runs from the data to the noise)."""
        return -self.velocity(x, t)

    def eps(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """eps_hat = sqrt(Sigma)^-1 (alpha u + alpha' x) / (alpha' sigma - alpha sigma')."""
        a, s = self.process.alpha_sigma(t)
        da, ds = path_rates(self.process, t)
        u = self.velocity(x, t)
        z = (_bcast(a, x) * u + _bcast(da, x) * x) / _bcast(da * s - a * ds, x)
        return self.noise.inv_sqrt(z)

    def pair(self, x0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The noise ``z`` reordered by the coupling (unchanged for ``independent``)."""
        return z[ot_pairing(x0, z)] if self.coupling == "ot" else z

    def denoising_loss(self, x0: torch.Tensor, rng: Any) -> torch.Tensor:
        """Conditional flow matching: mean |u_theta(x_t, t) + alpha' x_0 + sigma' z|^2 (module docstring)."""
        p = self.process
        t = p.sample_t(rng)
        z = self.pair(x0, self.noise.sqrt(rng.randn(*self.shape).to(x0)))
        a, s = p.alpha_sigma(t)
        da, ds = path_rates(p, t)
        xt = _bcast(a, x0) * x0 + _bcast(s, x0) * z
        target = -(_bcast(da, x0) * x0 + _bcast(ds, x0) * z)
        return (self.raw(xt, t) - target).pow(2).mean()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "coupling": self.coupling,
                "velocity": "u = E[-(alpha' x_0 + sigma' sqrt(Sigma) eps) | x_t], generation time 1 - t"}


def build_path(path: str, noise: Spec, schedule: Spec, context: Any, t_min: float | None) -> Process:
    """The process of ``path``: the straight line, or a continuous VP schedule (default ``linear``)."""
    if path == "linear":
        if schedule is not None:
            raise ValueError("the linear flow-matching path takes no schedule (alpha = 1 - t, sigma = t)")
        if context is None or getattr(context, "data", None) is None:
            raise ValueError("a flow-matching family needs a build context with the dataset's info")
        return LinearProcess(StraightPath(), context.build("noise", noise), tuple(context.data.shape), t_min=t_min)
    if path == "vp":
        return build_process("vp", noise, schedule or "linear", None, context, t_min=t_min)
    raise ValueError(f"path must be linear or vp, got {path!r}")


TMin = Annotated[float, Field(ge=0, lt=0.5)]


def flow_matching(path: Path = "linear", noise: Spec = "isotropic", schedule: Spec = None,
                  coupling: Coupling = "independent", t_min: TMin | None = None, network: Spec = None,
                  class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
                  context=None) -> FlowMatchingFamily:
    """Flow matching (Lipman et al. 2023) / rectified flow (Liu et al. 2023) on the ``linear`` or
    ``vp`` path with source noise N(0, Sigma) from ``noise``; ``coupling: ot`` for minibatch OT.
    ``t_min``: lowest time (default 0 on the linear path, 1e-3 on the VP path). ``class_conditional``:
    labels from the dataset, ``label_dropout`` for classifier-free guidance (bench_diffusion.guidance)."""
    process = build_path(path, noise, schedule, context, t_min)
    net, spec = build_network(network, context, class_conditional)
    info = context.data
    return FlowMatchingFamily(process, net, coupling=coupling, value_range=info.value_range, levels=info.levels,
                              network_spec=spec, **conditioning(spec, label_dropout))


__all__ = ["FlowMatchingFamily", "flow_matching", "ot_pairing", "path_rates", "build_path"]
