"""Objects bench hands to plugins: the build context and the metric context.

A plugin builds sub-components through ``context.build(kind, spec)`` rather than importing another
plugin, so a family can use any registered noise model, schedule or network, built-in or not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .protocols import DataInfo, FeatureSet
from .store import Store

#: the image sets a feature space is asked about (:meth:`MetricContext.feature_set`)
FEATURE_SETS = ("generated", "reference", "floor")


class MetricSkipped(Exception):
    """Raised by a metric that does not apply to a case (e.g. FID on 2-D points); the reason is
    recorded and the case stays ok."""


@dataclass
class BuildContext:
    """Passed to every factory that has a ``context`` parameter.

    - ``data``: the case dataset's :class:`~bench.protocols.DataInfo` (None while building a dataset);
    - ``seed``: the case seed (derive sub-seeds with :func:`bench.rng.derive_seed`);
    - ``store``: the content-addressed :class:`~bench.store.Store` (cache derived artifacts there);
    - ``build(kind, spec, **extra)``: build another registered component; ``spec`` is a name or a
      ``{"name": ..., **params}`` dict, ``extra`` are parameters the caller adds (e.g. shapes);
    - ``progress(iterable, desc, total)``: a progress bar that respects ``--quiet``;
    - ``log(message)``: a line in the case log;
    - ``device``: the case's torch device (``cpu``, ``cuda``, ``cuda:N``, ``mps``): create tensors
      there (``torch.zeros(..., device=ctx.device)``); ``precision``: ``fp32``, ``bf16`` or ``fp16``
      (bench applies autocast itself; see :mod:`bench.device`).
    """

    data: DataInfo | None
    seed: int
    store: Store
    build_fn: Callable[..., Any]
    progress_fn: Callable[..., Iterable] = lambda it, desc="", total=None: it
    log_fn: Callable[[str], None] = lambda msg: None
    device: str = "cpu"
    dataset: Any = None
    precision: str = "fp32"

    @classmethod
    def from_registries(cls, registries: Any, *, seed: int, store: Store, data: DataInfo | None = None,
                        dataset: Any = None, progress: Callable[..., Iterable] | None = None,
                        log: Callable[[str], None] | None = None, device: str = "cpu",
                        precision: str = "fp32", extra: dict[tuple[str, str], Callable[..., Any]] | None = None) -> "BuildContext":
        """The context every caller uses: ``build`` creates registered components
        (``registries[kind].create(spec, context=ctx)``). ``data`` defaults to ``dataset.info``;
        ``extra`` maps ``(kind, name)`` to factories ``f(**params)`` outside the registries (tests)."""
        extra = dict(extra or {})

        def build_fn(kind: str, spec: dict[str, Any], ctx: "BuildContext") -> Any:
            factory = extra.get((kind, spec.get("name")))
            if factory is not None:
                return factory(**{k: v for k, v in spec.items() if k not in ("name", "id")})
            if kind == "network" and "compile" in spec:  # bench's own key (bench.device.compiled)
                from .device import compiled

                spec = dict(spec)
                enabled = spec.pop("compile")
                network = registries[kind].create(spec, context=ctx)
                return compiled(network) if enabled else network
            return registries[kind].create(spec, context=ctx)

        if data is None and dataset is not None:
            data = dataset.info
        ctx = cls(data, seed, store, build_fn, device=device, dataset=dataset, precision=precision)
        if progress is not None:
            ctx.progress_fn = progress
        if log is not None:
            ctx.log_fn = log
        return ctx

    def build(self, kind: str, spec: Any, **extra: Any) -> Any:
        if isinstance(spec, str):
            spec = {"name": spec}
        return self.build_fn(kind, {**spec, **extra}, self)

    def progress(self, iterable: Iterable, desc: str = "", total: int | None = None) -> Iterable:
        return self.progress_fn(iterable, desc=desc, total=total)

    def log(self, message: str) -> None:
        self.log_fn(message)


@dataclass
class SampleOutput:
    samples: Any
    seconds: float
    nfe: float


@dataclass
class MetricContext:
    """What a metric sees.

    - ``samples``: the case's generated samples ``(N, *shape)`` in model space (None when the case
      has no sampler, e.g. likelihood-only, and when the samples were streamed: see below);
    - ``dataset`` / ``data``: the dataset object and its info; ``dataset.split("test")`` is the
      held-out reference;
    - ``family``: the trained family (EMA weights), ``sampler``: the sampler;
    - ``params``: this metric's parameters from the suite;
    - ``seed``: the case's sample seed (``sample_seeds`` in the suite; the training seed unless it sets
      one): draw the metric's own randomness from it; ``store``, ``build`` (as in :class:`BuildContext`);
    - ``resample(n)``: draw ``n`` fresh samples with the case's sampler and return a
      :class:`SampleOutput` (timed, with NFE), for throughput measurements;
    - ``artifact_dir``: write files here and they are logged with the case;
    - ``timings``: phase seconds measured so far; ``nfe``: NFE per sample of the main sampling;
    - ``features(space, which)``, ``feature_set(space, which)``, ``labels(which, space)``: features in a
      named feature space (a registered ``feature_extractor``: ``auto``, ``digits-classifier``,
      ``inception-v3-compat``, ``random-proj``, ...) of the generated samples, the reference set or the
      noise-floor sample: the very features (and store cache) the ``fid``/``kid``/``prc`` metrics use
      with the same options (docs/metrics.md, "Reference and noise floor");
    - ``num_samples``: the number of generated samples of a case that streams them (None otherwise);
      ``shared``: a dict shared by the case's metrics (e.g. one feature stream for fid, kid and prc).

    Streaming (docs/plugins.md, "Metrics at full size"): the runner draws samples in chunks of
    ``eval.batch_size``. A metric with a method ``accumulate(ctx, chunk, start)`` gets every chunk
    (float32, CPU, model space; ``start`` is the index of its first sample) while the case samples,
    then ``compute(ctx)`` with ``ctx.samples`` None and ``ctx.num_samples`` set. A metric without it
    gets the whole tensor in ``ctx.samples`` when ``eval.num_samples <= eval.hold_samples`` or when it
    sets ``needs_samples = True``; otherwise it is skipped with the reason.
    """

    samples: Any
    dataset: Any
    family: Any
    sampler: Any
    params: dict[str, Any]
    seed: int
    store: Store
    artifact_dir: Path
    build_context: BuildContext
    resample: Callable[[int], SampleOutput]
    timings: dict[str, float] = field(default_factory=dict)
    nfe: float | None = None
    case_config: dict[str, Any] = field(default_factory=dict)
    num_samples: int | None = None
    shared: dict[Any, Any] = field(default_factory=dict, repr=False)
    _spaces: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def data(self) -> DataInfo:
        return self.dataset.info

    def feature_set(self, space: Any = "auto", which: str = "generated", **options: Any) -> FeatureSet:
        """The :class:`~bench.protocols.FeatureSet` of ``which`` (``"generated"``, ``"reference"`` or
        ``"floor"``) in feature space ``space`` (a feature-extractor name or spec, built once per
        context). The extractor computes it with its ``features_for(ctx, which, **options)``; the
        built-in ones take the fidelity metrics' options (``num_samples``, ``reference_split``,
        ``reference_num_samples``, ``quantize``, ``batch_size``) with the same defaults, so the
        reference features come from the same store entry as ``fid``'s."""
        if which not in FEATURE_SETS:
            raise ValueError(f"which must be one of {', '.join(FEATURE_SETS)}, got {which!r}")
        key = repr(space)
        if key not in self._spaces:
            self._spaces[key] = self.build("feature_extractor", space)
        extractor = self._spaces[key]
        provider = getattr(extractor, "features_for", None)
        if provider is None:
            name = space if isinstance(space, str) else dict(space).get("name")
            raise MetricSkipped(f"feature extractor '{name}' has no features_for(ctx, which): it can serve "
                                "fid/kid/prc (which wrap plain callables) but not ctx.features")
        return provider(self, which, **options)

    def features(self, space: Any = "auto", which: str = "generated", **options: Any) -> Any:
        """Features ``(N, d)`` of ``which`` in ``space`` (:meth:`feature_set`)."""
        return self.feature_set(space, which, **options).features

    def labels(self, which: str = "reference", space: Any = "auto", **options: Any) -> Any:
        """Class labels int64 ``(N,)`` row-aligned with :meth:`features` of ``which`` (the rows of the
        reference and floor sets depend on the feature space's reference split); None for generated
        samples or unlabelled data."""
        return self.feature_set(space, which, **options).labels

    def build(self, kind: str, spec: Any, **extra: Any) -> Any:
        return self.build_context.build(kind, spec, **extra)

    def log(self, message: str) -> None:
        self.build_context.log(message)
