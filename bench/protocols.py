"""What each kind of component looks like (``typing.Protocol`` classes).

These are structural: a plugin's objects need the attributes and methods below, not a base class.
Tensors are ``torch.Tensor``; "model space" is the space a family trains in (images in [-1, 1],
points as given). Optional methods are marked as such; bench checks for them with ``hasattr``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, runtime_checkable


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


@runtime_checkable
class Dataset(Protocol):
    info: DataInfo

    def split(self, name: str) -> Any:
        """The ``"train"`` or ``"test"`` split as a float tensor ``(N, *info.shape)`` in model space."""


@runtime_checkable
class NoiseModel(Protocol):
    """The covariance Sigma of the forward noise (diffusion-math.md section 4.3: every injected
    noise z becomes sqrt(Sigma) z). Operations act on batches ``(B, *shape)``."""

    def sample(self, rng: Any) -> Any: ...          # sqrt(Sigma) z with z from ``rng.randn``
    def sqrt(self, z: Any) -> Any: ...              # sqrt(Sigma) z
    def inv_sqrt(self, x: Any) -> Any: ...          # sqrt(Sigma)^-1 x
    def cov(self, x: Any) -> Any: ...               # Sigma x
    def inv_cov(self, x: Any) -> Any: ...           # Sigma^-1 x
    def logdet(self) -> float: ...                  # log det Sigma


@runtime_checkable
class Schedule(Protocol):
    """Noise levels. Discrete VP schedules expose ``betas(T)``; VE schedules ``sigmas(L)``."""


@runtime_checkable
class Family(Protocol):
    """A trainable generative model. Families are ``torch.nn.Module`` instances so that bench can
    checkpoint (``state_dict``), optimise (``parameters``) and keep an EMA of them.

    - ``provides``: capabilities (``"eps"``, ``"score"``, ``"vp"``, ``"ve"``, ``"likelihood"``...).
    - ``loss(x, rng)``: the mean training loss on a batch ``x`` in model space.
    - ``nfe_modules()``: modules whose forward calls are network function evaluations (bench counts
      them with forward hooks; a call on a batch counts once).
    - optional ``log_likelihood(x, rng, **opts) -> LikelihoodResult``.
    - optional ``describe() -> dict`` of provenance (e.g. the realised timestep sequence) that bench
      logs as a JSON artifact.
    """

    provides: frozenset
    trainable: bool

    def loss(self, x: Any, rng: Any) -> Any: ...
    def nfe_modules(self) -> list: ...


@runtime_checkable
class Sampler(Protocol):
    """Draws a batch from a trained family. ``requires`` lists family capabilities it needs.

    ``sample(family, rng)`` returns ``(rng.batch_size, *shape)`` samples in model space. All
    randomness must come from ``rng`` (a :class:`bench.rng.PerSampleRNG`), so that sample i is the
    same whatever the batch size. ``steps`` is the requested number of steps (None if adaptive).
    Optional ``describe() -> dict`` (timesteps, solver) is logged as an artifact.
    """

    requires: frozenset
    steps: int | None

    def sample(self, family: Any, rng: Any) -> Any: ...


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


@runtime_checkable
class Metric(Protocol):
    """``compute(ctx)`` returns ``{name: float}``; ``ctx`` is a :class:`bench.context.MetricContext`.
    Raise :class:`bench.context.MetricSkipped` when the metric does not apply to this case."""

    def compute(self, ctx: Any) -> dict[str, float]: ...

    # Optional: ``precompute(dataset, num_samples, store, log) -> dict`` computes (or finds in the
    # store) whatever the metric needs from real data alone, e.g. reference statistics; ``bench ref``
    # calls it, so a cluster can fill the shared store before the cases run. Returns a summary.


@runtime_checkable
class Executor(Protocol):
    """Runs case jobs. ``run(jobs, on_result)`` calls ``on_result(record)`` on the driver as each
    job ends, in any order; jobs are picklable :class:`bench.runner.CaseJob` objects."""

    def run(self, jobs: Iterable[Any], on_result: Any) -> None: ...
