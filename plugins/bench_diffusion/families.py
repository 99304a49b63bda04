"""Diffusion families: a forward :class:`~bench_diffusion.processes.Process` plus a network.

``ddpm`` / ``ni_ddpm`` (discrete VP), ``smld`` / ``ni_smld`` (discrete VE, noise-conditional or
unconditional score network), ``vp_sde`` / ``ve_sde`` (continuous time) are one class,
:class:`DiffusionFamily`, with different processes. The sampler-facing interface (docs/diffusion.md):

- ``family.process``: alpha(t), sigma(t), f(t), g2(t), posterior(t, s), sampling_times(...), prior;
- ``family.eps(x, t)``: the noise prediction eps_hat in x_t = alpha x_0 + sigma sqrt(Sigma) eps
  (ONE network call; t a float shared by the batch);
- ``family.x0(x, t, eps)``: Tweedie's estimate (x - sigma sqrt(Sigma) eps) / alpha (E5: with 1/alpha);
- ``family.eps_from_x0(x, t, x0)``: sqrt(Sigma)^-1 (x - alpha x0) / sigma;
- ``family.sigma_score(x, t, eps)``: the Sigma-preconditioned score Sigma s = -sqrt(Sigma) eps / sigma
  (6.2.11 / 6.3.11: s = -sqrt(Sigma)^-1 eps / sigma);
- ``family.pf_drift(x, t)``: the probability-flow ODE drift f x - 1/2 g^2 Sigma s (section 3).

Network parameterisation (``prediction``): ``eps`` (the network outputs eps), ``x0`` or ``v``
(v = alpha eps - sigma sqrt(Sigma)^-1 x_0, the whitened v of Salimans & Ho). The network gets
``x_t`` times the process's ``input_scale(t)`` = 1 / sqrt(alpha^2 + sigma^2) so its input stays
O(1) (VE: 1 / sqrt(1 + sigma^2); VP: none, alpha^2 + sigma^2 = 1; not for the unconditional SMLD
network, which must not see sigma) and the noise level ``1000 t``.

Loss weightings (``weighting``), all means over the batch and dimensions (6.2.12-14, 2.5.7):
``eps`` = L_a = |eps - eps_hat|^2 (lambda = (1 - alpha_bar) Sigma; SMLD: lambda = sigma^2 Sigma),
``b`` = |sqrt(Sigma)^-1 (eps - eps_hat)|^2, ``c`` = |sqrt(Sigma) (eps - eps_hat)|^2,
``x0`` = |x_0 - x0_hat|^2, ``v`` = |v - v_hat|^2; ``auto`` = the prediction's own target.

Class-conditional models (``num_classes`` K; :mod:`bench_diffusion.guidance`): the network gets labels
y in 0..K-1, or the null class K; training replaces a label by K with probability ``label_dropout``;
samplers condition every network call through :meth:`DiffusionFamily.conditioned` and apply
classifier-free guidance there, once for every sampler.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from bench.protocols import LikelihoodResult
from bench.types import Levels

from .conditioning import ClassConditional, LabelDropout

from .guidance import Condition, check_labels, guide
from .processes import Process, _bcast, _t64, harmonic_mean, make_process

Prediction = Literal["eps", "x0", "v"]
Weighting = Literal["auto", "eps", "b", "c", "x0", "v"]
Spec = str | dict | None


class DiffusionFamily(nn.Module):
    """A trainable diffusion model (see the module docstring for the interface)."""

    trainable = True
    provides: frozenset = frozenset()  # stamped by Registry.create from the registration (plugin.py)

    def __init__(self, process: Process, net: nn.Module | None, *, name: str = "diffusion",
                 prediction: str = "eps", weighting: str = "auto", conditional: bool = True,
                 harmonic_mean_correction: bool = True, value_range: tuple[float, float] | None = None,
                 levels: int | None = None, network_spec: Any = None, num_classes: int | None = None,
                 label_dropout: float = 0.0):
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be eps, x0 or v, got {prediction!r}")
        if weighting not in ("auto", "eps", "b", "c", "x0", "v"):
            raise ValueError(f"weighting must be auto, eps, b, c, x0 or v, got {weighting!r}")
        if not conditional and process.kind != "ve":
            raise ValueError("an unconditional (sigma-free) network is the SMLD variant of section 4.2.4: "
                             "it needs a VE process")
        if not conditional and prediction != "eps":
            raise ValueError("the unconditional score network uses the eps parameterisation (6.3.11)")
        self.process, self.noise, self.shape = process, process.noise, process.shape
        self.net = net
        self.family_name = name
        self.prediction = prediction
        self.weighting = prediction if weighting == "auto" else weighting
        self.conditional = conditional
        self.harmonic_mean_correction = bool(harmonic_mean_correction) and not conditional
        self.value_range = tuple(value_range) if value_range is not None else None
        self.levels = levels
        self.network_spec = network_spec
        self.sigma_h = _sigma_h(process) if process.kind == "ve" else None
        self.likelihood_methods = ({"vlb": "discrete", "ode": "continuous"} if process.discrete and levels
                                   else {"ode": "continuous"})
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.num_classes = int(num_classes) if num_classes else None
        self.label_dropout = float(label_dropout)
        self.wants_labels = self.num_classes is not None  # the trainer calls loss(x, rng, labels=y)
        self.condition: Condition | None = None  # set by conditioned(): labels, guidance scale, interval

    # ------------------------------------------------------------------ network plumbing
    def nfe_modules(self) -> list[nn.Module]:
        return [self.net]

    def time_input(self, t: Any, batch: int, device=None) -> torch.Tensor:
        """The network's noise-level input 1000 t (zeros for the unconditional SMLD network)."""
        if isinstance(t, (int, float)) and self.conditional:  # a sampler's step: no 0-d tensors
            return torch.full((batch,), 1000.0 * t, dtype=torch.float32, device=device)
        t = _t64(t)
        if t.dim() == 0:
            t = t.expand(batch)
        out = (1000.0 * t).float()
        if not self.conditional:
            out = torch.zeros_like(out)
        return out.to(device) if device is not None else out

    def _net_in(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        scale = self.process.input_scale(t) if self.conditional else None  # the unconditional net must not see sigma
        return x if scale is None else x * _bcast(scale, x)

    def raw(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """The network output at (x, t): one network call (two with guidance, :meth:`network`)."""
        x_in, t_in = self._net_in(x, t), self.time_input(t, x.shape[0], x.device)
        if self.num_classes is None:
            return self.net(x_in, t_in)
        return self.network(lambda **y: self.net(x_in, t_in, **y), x, self.process.alpha_sigma(t)[1])

    def network(self, call: Any, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """The one place a network output is made: ``call(**y)`` runs the network (``call()`` for an
        unconditional model; ``call(y=labels)``, ``call(y=None)`` = the null class, for a conditional
        one) at noise level ``sigma``; with guidance, (1 + w) out(y) - w out(null)
        (:func:`bench_diffusion.guidance.guide`)."""
        if self.num_classes is None:
            return call()
        return guide(call, self.condition, x, sigma, self.process)

    @contextmanager
    def conditioned(self, labels: torch.Tensor | None, guidance: float = 0.0,
                    interval: tuple[float, float] | None = None):
        """Every network call inside is for ``labels`` (None: the null class), guided with scale
        ``guidance`` where t lies in ``interval`` (:class:`bench_diffusion.guidance.Condition`)."""
        before = self.condition
        self.condition = Condition(labels, float(guidance), None if interval is None else tuple(interval))
        try:
            yield self
        finally:
            self.condition = before

    def _eps_from_output(self, x: torch.Tensor, t: Any, out: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return out
        a, s = self.process.alpha_sigma(t)
        a, s = _bcast(a, x), _bcast(s, x)
        if self.prediction == "x0":
            return self.noise.inv_sqrt(x - a * out) / s
        w = self.noise.inv_sqrt(x)  # v: eps = (alpha v + sigma w) / (alpha^2 + sigma^2)
        return (a * out + s * w) / (a * a + s * s)

    # ------------------------------------------------------------------ sampler interface
    def eps(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """eps_hat(x, t), one network call. For the unconditional SMLD network with the harmonic-mean
        correction (6.3.29): eps_hat(x, sigma_i) = (sigma_H / sigma_i) eps_theta(x)."""
        e = self._eps_from_output(x, t, self.raw(x, t))
        if self.harmonic_mean_correction:
            e = e * _bcast(self.sigma_h / self.process.alpha_sigma(t)[1], x)
        return e

    def x0(self, x: torch.Tensor, t: Any, eps: torch.Tensor) -> torch.Tensor:
        """Tweedie: x0_hat = (x - sigma sqrt(Sigma) eps) / alpha (6.2.15; E5 includes 1/alpha)."""
        if isinstance(t, (int, float)):  # a sampler's step: Python floats, the same float32 arithmetic
            a, s = self.process.alpha_sigma_floats(t)
            return (x - s * self.noise.sqrt(eps)) / a
        a, s = self.process.alpha_sigma(t)
        return (x - _bcast(s, x) * self.noise.sqrt(eps)) / _bcast(a, x)

    def eps_from_x0(self, x: torch.Tensor, t: Any, x0: torch.Tensor) -> torch.Tensor:
        a, s = self.process.alpha_sigma(t)
        return self.noise.inv_sqrt(x - _bcast(a, x) * x0) / _bcast(s, x)

    def sigma_score(self, x: torch.Tensor, t: Any, eps: torch.Tensor) -> torch.Tensor:
        """Sigma s = -sqrt(Sigma) eps / sigma (the preconditioned score every step uses, E11)."""
        return -self.noise.sqrt(eps) / self.process.sigma(t)

    def score(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """s = -sqrt(Sigma)^-1 eps_hat / sigma (6.2.11, 6.3.11)."""
        return -self.noise.inv_sqrt(self.eps(x, t)) / self.process.sigma(t)

    def pf_drift(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """dx/dt = f(t) x - 1/2 g(t)^2 Sigma s = f x + 1/2 g^2 sqrt(Sigma) eps_hat / sigma (section 3)."""
        p = self.process
        e = self.eps(x, t)
        return p.f(t) * x + (0.5 * p.g2(t) / p.sigma(t)) * self.noise.sqrt(e)

    # ------------------------------------------------------------------ training
    def loss(self, x0: torch.Tensor, rng: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of a batch ``x0``; a conditional model (``wants_labels``) is called with
        the batch's class ``labels`` (the trainer's ``loss(x, rng, labels=y)``), each replaced by the
        null class with probability ``label_dropout`` (Ho & Salimans 2022, Algorithm 1) before
        :meth:`denoising_loss`."""
        y = check_labels(labels, x0, self.num_classes)
        if self.num_classes is None:
            return self.denoising_loss(x0, rng)
        if self.label_dropout > 0:
            drop = rng.rand().reshape(-1).to(y.device) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        with self.conditioned(y):
            return self.denoising_loss(x0, rng)

    def denoising_loss(self, x0: torch.Tensor, rng: Any) -> torch.Tensor:
        """Denoising loss at t ~ U(grid) or U[t_min, 1], eps ~ N(0, I) (6.4.16 / 6.3.12 with the
        chosen weighting; see the module docstring)."""
        p = self.process
        t = p.sample_t(rng)
        eps = rng.randn(*self.shape).to(x0)
        xt = p.q_sample(x0, t, eps)
        out = self.raw(xt, t)
        w = self.weighting
        if w == self.prediction == "eps":
            return (out - eps).pow(2).mean()
        a, s = p.alpha_sigma(t)
        a, s = _bcast(a, x0), _bcast(s, x0)
        if w == self.prediction == "x0":
            return (out - x0).pow(2).mean()
        if w == self.prediction == "v":
            return (out - (a * eps - s * self.noise.inv_sqrt(x0))).pow(2).mean()
        err = self._eps_from_output(xt, t, out) - eps
        if w == "eps":
            return err.pow(2).mean()
        if w == "b":
            return self.noise.inv_sqrt(err).pow(2).mean()
        if w == "c":
            return self.noise.sqrt(err).pow(2).mean()
        if w == "x0":
            return (s / a * self.noise.sqrt(err)).pow(2).mean()
        return ((a * a + s * s) / a * err).pow(2).mean()  # v - v_hat = (alpha^2 + sigma^2) / alpha (eps - eps_hat)

    # ------------------------------------------------------------------ likelihood
    def log_likelihood(self, x: torch.Tensor, rng: Any, method: str | None = None, **opts: Any) -> LikelihoodResult:
        """``vlb`` (discrete processes on quantised data: the discrete VLB with a discretised
        Gaussian decoder) or ``ode`` (probability-flow ODE, Hutchinson or exact trace); see
        :mod:`bench_diffusion.likelihood` for the options."""
        from . import likelihood

        method = method or next(iter(self.likelihood_methods))
        if method == "vlb":
            return likelihood.vlb(self, x, rng, **opts)
        if method == "ode":
            return likelihood.ode_nll(self, x, rng, **opts)
        raise ValueError(f"unknown likelihood method {method!r}; this family offers {sorted(self.likelihood_methods)}")

    # ------------------------------------------------------------------ provenance
    def describe(self) -> dict[str, Any]:
        return {"family": self.family_name, "prediction": self.prediction, "weighting": self.weighting,
                "conditional": self.conditional, "harmonic_mean_correction": self.harmonic_mean_correction,
                "sigma_H": self.sigma_h, "network": self.network_spec,
                "network_time_input": "1000 * t" if self.conditional else "0 (unconditional)",
                "network_input_scaling": ("x" if not self.conditional or self.process.input_scale(1.0) is None
                                          else "x / sqrt(alpha^2 + sigma^2)"),
                "provides": sorted(self.provides), "likelihood_methods": self.likelihood_methods,
                "process": self.process.describe(),
                **({"num_classes": self.num_classes, "label_dropout": self.label_dropout}
                   if self.num_classes else {})}


def _sigma_h(process: Process) -> float:
    """Harmonic mean of the training sigmas (section 4.2.4): the discrete levels, or
    1 / sigma_H = int_0^1 dt / sigma(t) for continuous time."""
    if process.discrete:
        return harmonic_mean(process.table["sigmas"])
    t = torch.linspace(process.t_min, process.t_max, 20001, dtype=torch.float64)
    inv = 1.0 / process.alpha_sigma(t)[1]
    return float(1.0 / torch.trapezoid(inv, t) * (process.t_max - process.t_min))


# ---------------------------------------------------------------- building blocks for factories

def build_process(kind: str, noise: Spec, schedule: Spec, T: int | None, context: Any,
                  t_min: float | None = None) -> Process:
    """Build noise and schedule through the registries and fit ``sigma_max="auto"`` to the data."""
    if context is None or getattr(context, "data", None) is None:
        raise ValueError("a diffusion family needs a build context with the dataset's info")
    shape = tuple(context.data.shape)
    noise_obj = context.build("noise", noise)
    sched = context.build("schedule", schedule)
    if getattr(sched, "kind", None) == "ve" and not sched.ready:
        if getattr(context, "dataset", None) is None:
            raise ValueError("sigma_max='auto' needs the training data (context.dataset); give sigma_max explicitly")
        sched.fit(context.dataset.split("train"), noise_obj)
    return make_process(kind, sched, noise_obj, shape, T=T, t_min=t_min)


def build_network(network: Spec, context: Any, class_conditional: bool = False) -> tuple[nn.Module, dict]:
    """``network=None`` picks ``mlp`` for points and ``unet`` for images (built through the
    registry with ``in_shape`` = the data shape). ``class_conditional``: the network gets
    ``num_classes`` = the dataset's (:func:`num_classes_for`)."""
    info = context.data
    if network is None:
        spec: dict = {"name": "mlp" if info.modality == "points" else "unet"}
    elif isinstance(network, str):
        spec = {"name": network}
    else:
        spec = {k: v for k, v in network.items() if k != "id"}
    k = num_classes_for(spec, context, class_conditional)
    if k is not None:
        spec["num_classes"] = k
    net = context.build("network", spec, in_shape=list(info.shape))
    return net, spec


def num_classes_for(spec: dict, context: Any, class_conditional: bool) -> int | None:
    """The number of classes of a conditional model: the network spec's ``num_classes``, else with
    ``class_conditional`` the dataset's ``info.params["num_classes"]`` (None: unconditional)."""
    given = spec.get("num_classes")
    data_k = (getattr(context.data, "params", None) or {}).get("num_classes")
    if class_conditional and given is None:
        if not data_k:
            raise ValueError(f"class_conditional: true needs a labelled dataset (one that sets num_classes); "
                             f"'{context.data.name}' has none")
        return int(data_k)
    if given is not None and data_k and int(given) != int(data_k):
        raise ValueError(f"the network's num_classes ({given}) is not the dataset's ({data_k})")
    return None if given is None else int(given)


def _family(name: str, kind: str, noise: Spec, schedule: Spec, T: int | None, prediction: str, weighting: str,
            network: Spec, context: Any, t_min: float | None = None, conditional: bool = True,
            harmonic_mean: bool = True, class_conditional: bool = False, label_dropout: float = 0.1) -> DiffusionFamily:
    process = build_process(kind, noise, schedule, T, context, t_min=t_min)
    net, spec = build_network(network, context, class_conditional)
    info = context.data
    return DiffusionFamily(process, net, name=name, prediction=prediction, weighting=weighting,
                           conditional=conditional, harmonic_mean_correction=harmonic_mean,
                           value_range=info.value_range, levels=info.levels, network_spec=spec,
                           **conditioning(spec, label_dropout))


def conditioning(spec: dict, label_dropout: float) -> dict[str, Any]:
    """The family's ``num_classes`` / ``label_dropout`` from its network spec (built by :func:`build_network`)."""
    k = spec.get("num_classes")
    return {"num_classes": k, "label_dropout": label_dropout} if k else {}


# ---------------------------------------------------------------- registered factories

TMin = Annotated[float, Field(gt=0, lt=0.5)]


def ddpm(noise: Spec = "isotropic", schedule: Spec = "linear", T: Levels = 1000, prediction: Prediction = "eps",
         weighting: Weighting = "auto", network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """DDPM (Ho et al.; thesis 2.4) with T discrete steps; with a non-isotropic ``noise`` it is
    NI-DDPM (6.2). ``network=None``: mlp for points, unet for images."""
    return _family("ddpm", "vp", noise, schedule, T, prediction, weighting, network, context,
                   class_conditional=class_conditional, label_dropout=label_dropout)


def ni_ddpm(noise: Spec = "gff", schedule: Spec = "linear", T: Levels = 1000, prediction: Prediction = "eps",
            weighting: Weighting = "auto", network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """NI-DDPM (thesis 6.2): ddpm with GFF noise by default."""
    return _family("ni_ddpm", "vp", noise, schedule, T, prediction, weighting, network, context,
                   class_conditional=class_conditional, label_dropout=label_dropout)


def smld(noise: Spec = "isotropic", schedule: Spec = "geometric", L: Levels = 232, conditional: bool = True,
         harmonic_mean: bool = False, prediction: Prediction = "eps", weighting: Weighting = "auto",
         network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """SMLD (Song & Ermon; thesis 2.5) with L geometric noise levels: a noise-conditional score
    network s = -sqrt(Sigma)^-1 eps_theta(x, sigma) / sigma, or with ``conditional=False`` the
    unconditional eps_theta(x) (6.3.11), optionally with the harmonic-mean correction (6.3.29,
    ``harmonic_mean=True``) at sampling time. The correction is exact for a single data point when
    the network averages over the noise levels uniformly (section 4.2.4); a trained network averages
    over the posterior of sigma given x instead, and on toy2d/8gaussians the correction made samples
    worse (SWD 2.6 against 0.26 without, CAS 100 steps), so it is off by default."""
    return _family("smld", "ve", noise, schedule, L, prediction, weighting, network, context,
                   conditional=conditional, harmonic_mean=harmonic_mean,
                   class_conditional=class_conditional, label_dropout=label_dropout)


def ni_smld(noise: Spec = "gff", schedule: Spec = "geometric", L: Levels = 232, conditional: bool = True,
            harmonic_mean: bool = False, prediction: Prediction = "eps", weighting: Weighting = "auto",
            network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """NI-SMLD (thesis 6.3): smld with GFF noise by default."""
    return _family("ni_smld", "ve", noise, schedule, L, prediction, weighting, network, context,
                   conditional=conditional, harmonic_mean=harmonic_mean,
                   class_conditional=class_conditional, label_dropout=label_dropout)


def vp_sde(noise: Spec = "isotropic", schedule: Spec = "linear", t_min: TMin = 1e-3, prediction: Prediction = "eps",
           weighting: Weighting = "auto", network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """The VP SDE (2.4.44 / 6.2.33) trained in continuous time, t ~ U[t_min, 1]; ``linear`` is
    beta(t) = 0.1 + 19.9 t."""
    return _family("vp_sde", "vp", noise, schedule, None, prediction, weighting, network, context, t_min=t_min,
                   class_conditional=class_conditional, label_dropout=label_dropout)


def ve_sde(noise: Spec = "isotropic", schedule: Spec = "geometric", conditional: bool = True,
           harmonic_mean: bool = False, prediction: Prediction = "eps", weighting: Weighting = "auto",
           network: Spec = None,
         class_conditional: ClassConditional = False, label_dropout: LabelDropout = 0.1,
         context=None) -> DiffusionFamily:
    """The VE SDE (2.5.13 / 6.3.16) trained in continuous time, t ~ U[0, 1], sigma(t) from the schedule."""
    return _family("ve_sde", "ve", noise, schedule, None, prediction, weighting, network, context,
                   conditional=conditional, harmonic_mean=harmonic_mean,
                   class_conditional=class_conditional, label_dropout=label_dropout)


__all__ = ["DiffusionFamily", "build_process", "build_network", "num_classes_for", "conditioning", "ddpm", "ni_ddpm", "smld", "ni_smld",
           "vp_sde", "ve_sde"]
