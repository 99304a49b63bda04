"""What each kind of component looks like (``typing.Protocol`` classes), and the members bench calls.

These are structural: a plugin's objects need the attributes and methods below, not a base class.
Each protocol lists exactly what bench and the built-in plugins call on that kind; a method marked
``@optional`` is called only when present (or only by some built-ins, as its docstring says).
:data:`PROTOCOLS` maps each component kind to its protocol, and :func:`members` lists a protocol's
members with their arity; :mod:`bench.testing` checks objects against them (``bench plugins --check``,
``bench validate``, and the plugin authors' pytest helper ``bench.testing.assert_conforms``).

Tensors are ``torch.Tensor``; "model space" is the space a family trains in (images in [-1, 1],
points as given). Batches are ``(B, *shape)``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol


def optional(fn: Callable) -> Callable:
    """Marks a protocol method that bench calls only when the object has it."""
    fn.__bench_optional__ = True
    return fn


@dataclass(frozen=True)
class DataInfo:
    """Static facts about a dataset that other components build against.

    ``shape`` is one sample's shape: ``(D,)`` for points, ``(C, H, W)`` for images, ``(T, C, H, W)``
    for video. ``levels`` is the number of quantisation levels L (256 for 8-bit, 17 for sklearn
    digits) or None for continuous data. Images are in model space ``x = 2 k / (L - 1) - 1``
    (k the integer level), so ``value_range`` is ``(-1, 1)``. ``params`` carries known ground truth
    (e.g. Gaussian mixture weights, means and covariances) for oracles and closed-form metrics.
    """

    name: str
    shape: tuple[int, ...]
    modality: str  # "points" | "image" | "video"
    levels: int | None = None
    value_range: tuple[float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        out = 1
        for s in self.shape:
            out *= s
        return out


class Dataset(Protocol):
    info: DataInfo

    def split(self, name: str) -> Any:
        """The ``"train"`` or ``"test"`` split as a float tensor ``(N, *info.shape)`` in model space."""

    @optional
    def labels(self, split: str) -> Any:
        """Class labels of a split, int64 ``(N,)``, row-aligned with ``split(split)``; labelled data
        also sets ``info.params["num_classes"]`` (the digits classifier, :meth:`MetricContext.labels`)."""

    @optional
    def rows(self, split: str) -> Any:
        """The split without holding it in memory: ``len(rows)`` and ``rows[idx]`` (``idx`` an int64
        CPU tensor) equal to ``split(split)[idx]``; picklable (DataLoader workers). The trainer reads
        batches through it when present (:mod:`bench.batches`)."""


class NoiseModel(Protocol):
    """The covariance Sigma of the forward noise (diffusion-math.md section 4.3: every injected
    noise z becomes sqrt(Sigma) z). ``shape`` is one sample's shape; operations act on batches."""

    shape: tuple

    def sample(self, rng: Any) -> Any:
        """sqrt(Sigma) z with z from ``rng.randn(*shape)``."""

    def sqrt(self, z: Any) -> Any:
        """sqrt(Sigma) z (the symmetric root)."""

    def inv_sqrt(self, x: Any) -> Any:
        """sqrt(Sigma)^-1 x."""

    def cov(self, x: Any) -> Any:
        """Sigma x."""

    def inv_cov(self, x: Any) -> Any:
        """Sigma^-1 x."""

    def logdet(self) -> float:
        """log det Sigma."""

    def log_prob(self, x: Any, scale2: float = 1.0) -> Any:
        """log N(x; 0, scale2 Sigma) per sample ``(B,)`` = -(x^T Sigma^-1 x / scale2 + D log(2 pi scale2)
        + log det Sigma) / 2 (the prior term of every likelihood: diffusion-math.md section 4.3)."""

    def describe(self) -> dict:
        """Provenance logged in ``family.json`` (name, parameters, log det)."""

    @optional
    def quad(self, x: Any) -> Any:
        """x^T Sigma^-1 x per sample ``(B,)``; the DDPM VLB (``bpd`` with ``method: vlb``) calls it."""

    @optional
    def variances(self) -> Any:
        """diag(Sigma) with the sample's shape; the DDPM VLB's decoder calls it (with ``dim`` = D)."""


class Schedule(Protocol):
    """Noise levels, used by the process of a diffusion family (bench_diffusion, docs/diffusion.md).
    A VP schedule (``kind = "vp"``) gives ``betas(T)``/``alpha_bars(T)`` for discrete processes and
    ``log_alpha_bar(t)``/``dlog_alpha_bar(t)`` for continuous ones; a VE schedule (``kind = "ve"``)
    gives ``sigmas(L)``, ``log_sigma(t)``, ``dlog_sigma(t)`` (and ``ready``/``fit`` for
    ``sigma_max="auto"``)."""

    kind: str

    def describe(self) -> dict:
        """Provenance logged in ``family.json``."""

    @optional
    def betas(self, T: int) -> Any:
        """beta_1..beta_T (float64) of a T-level discrete VP schedule."""

    @optional
    def alpha_bars(self, T: int) -> Any:
        """alpha_bar_1..alpha_bar_T = cumprod(1 - beta) (float64)."""

    @optional
    def log_alpha_bar(self, t: Any) -> Any:
        """log alpha_bar(t), t in [0, 1] (continuous-time VP families)."""

    @optional
    def dlog_alpha_bar(self, t: Any) -> Any:
        """d log alpha_bar / dt = -beta(t)."""

    @optional
    def sigmas(self, L: int) -> Any:
        """sigma_1..sigma_L of an L-level VE schedule."""

    @optional
    def log_sigma(self, t: Any) -> Any:
        """log sigma(t) of a VE schedule."""

    @optional
    def dlog_sigma(self, t: Any) -> Any:
        """d log sigma / dt."""


class Family(Protocol):
    """A trainable generative model. Families are ``torch.nn.Module`` instances so that bench can
    checkpoint (``state_dict``/``load_state_dict``), optimise (``parameters``), switch ``train()``/
    ``eval()`` and keep an EMA of them. ``provides`` (capabilities such as ``"eps"``, ``"score"``,
    ``"vp"``, ``"ve"``, ``"likelihood"``) is stamped from the registration. Optional attributes:
    ``trainable`` (False skips training), ``likelihood_methods`` (method -> ``"continuous"`` |
    ``"discrete"``, the first the default; read by ``bpd``/``nll``). Samplers call further,
    family-specific members (bench_diffusion's VP interface: docs/diffusion.md, "Writing a sampler")."""

    provides: frozenset

    def loss(self, x: Any, rng: Any) -> Any:
        """The mean training loss (a scalar tensor) on a batch ``x`` in model space; ``rng`` is a
        :class:`bench.rng.BatchRNG`. A family with the attribute ``wants_labels = True`` is called
        ``loss(x, rng, labels=y)``, ``y`` the batch's int64 class labels (:mod:`bench.batches`)."""

    def nfe_modules(self) -> list:
        """Modules whose forward calls are network function evaluations (bench counts them with
        forward hooks; a call on a batch counts once)."""

    def parameters(self) -> Any:
        """torch.nn.Module.parameters."""

    def state_dict(self) -> dict:
        """torch.nn.Module.state_dict."""

    def load_state_dict(self, state: dict) -> Any:
        """torch.nn.Module.load_state_dict."""

    def train(self) -> Any:
        """torch.nn.Module.train."""

    def eval(self) -> Any:
        """torch.nn.Module.eval."""

    @optional
    def log_likelihood(self, x: Any, rng: Any) -> LikelihoodResult:
        """-log p(x) per sample (``bpd``/``nll`` metrics); keyword options such as ``method=``."""

    @optional
    def describe(self) -> dict:
        """Provenance (e.g. the realised timestep sequence), logged as ``family.json``."""


class Sampler(Protocol):
    """Draws a batch from a trained family. ``requires`` (family capabilities it needs) is stamped
    from the registration; ``steps`` is the requested number of steps (None if adaptive).
    All randomness must come from ``rng`` (a :class:`bench.rng.PerSampleRNG`), so that sample i is
    the same whatever the batch size. Optional attribute ``needs_grad = True`` runs it with autograd."""

    steps: int | None

    def sample(self, family: Any, rng: Any) -> Any:
        """``(rng.batch_size, *shape)`` samples in model space."""

    @optional
    def describe(self) -> dict:
        """What it did (timesteps, solver), logged as ``sampler.json`` after sampling."""


class Network(Protocol):
    """A ``torch.nn.Module`` built from ``in_shape`` (and the entry's parameters); families call it."""

    def forward(self, x: Any, t: Any, cond: Any = None) -> Any:
        """The network output for a batch ``x`` at times ``t`` ``(B,)``; ``cond`` is the conditioning
        a conditional family passes (class labels; mcvd's past/future frames), None otherwise."""

    def parameters(self) -> Any:
        """torch.nn.Module.parameters."""


@dataclass
class LikelihoodResult:
    """Negative log-likelihood per sample, in nats, and how it was obtained.

    ``kind`` is ``"continuous"`` (a density of x in model space, which bench converts to bits per
    dim with :func:`bench.likelihood.bits_per_dim`) or ``"discrete"`` (a probability of the
    quantised data, e.g. the DDPM VLB with a discretised decoder).
    """

    nll: Any
    kind: str
    method: str
    nfe: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Metric(Protocol):
    """``compute(ctx)`` returns ``{name: float}``; ``ctx`` is a :class:`bench.context.MetricContext`
    (samples, data, labels and feature spaces: see there). Raise :class:`bench.context.MetricSkipped`
    when the metric does not apply to this case."""

    def compute(self, ctx: Any) -> dict:
        """The metric's values."""

    @optional
    def precompute(self, dataset: Any, num_samples: Any, store: Any, log: Any) -> dict:
        """Compute (or find in the store) what it needs from real data alone, e.g. reference
        statistics; ``bench ref`` calls it so a cluster can fill the shared store first."""


class FeatureExtractor(Protocol):
    """A feature space for FID/KID/PRC and :meth:`bench.context.MetricContext.features`: either a
    plain callable ``f(images) -> (N, d)`` on float images ``(N, C, H, W)`` in [-1, 1] (bench_metrics
    wraps it), or an object with ``features_for(ctx, which)`` returning the cached
    :class:`FeatureSet` of ``which`` in ``("generated", "reference", "floor")`` (the built-in extractors)."""

    def __call__(self, images: Any) -> Any:
        """Features ``(N, d)``; not needed when the object has ``features_for``."""


class Executor(Protocol):
    """Runs case jobs. ``run(jobs, on_result)`` calls ``on_result(record)`` on the driver as each
    job ends, in any order; jobs are picklable :class:`bench.runner.CaseJob` objects."""

    def run(self, jobs: Iterable[Any], on_result: Any) -> None:
        """Run every job; ``bench.runner.run_case(job)`` runs one."""


@dataclass
class FeatureSet:
    """Features of one image set in a named feature space (:meth:`bench.context.MetricContext.features`).

    ``features`` ``(N, d)``; ``labels`` int64 ``(N,)`` row-aligned (None for generated samples or
    unlabelled data); ``split`` the dataset split it came from (None for generated samples); ``key``
    the store key of the cached features; ``cached`` whether they came from the cache."""

    features: Any
    labels: Any = None
    split: str | None = None
    key: str = ""
    cached: bool = False


#: component kind -> its protocol
PROTOCOLS: dict[str, type] = {"dataset": Dataset, "noise": NoiseModel, "schedule": Schedule, "family": Family,
                              "sampler": Sampler, "network": Network, "metric": Metric,
                              "feature_extractor": FeatureExtractor, "executor": Executor}


@dataclass(frozen=True)
class Member:
    """One member of a protocol: a method (``arity`` = the positional arguments bench may pass it,
    after ``self``) or an attribute (``arity`` None); ``optional`` members are checked only when present."""

    name: str
    arity: int | None
    optional: bool
    doc: str


def members(protocol: type) -> list[Member]:
    """The members a protocol declares: its annotated attributes, then its methods in order."""
    out = [Member(name, None, False, "") for name in protocol.__dict__.get("__annotations__", {})]
    for name, fn in protocol.__dict__.items():
        if name.startswith("_") and name != "__call__" or not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]
        arity = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        out.append(Member(name, arity, getattr(fn, "__bench_optional__", False), inspect.getdoc(fn) or ""))
    return out
