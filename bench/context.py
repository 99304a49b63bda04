"""Objects bench hands to plugins: the build context and the metric context.

A plugin builds sub-components through ``context.build(kind, spec)`` rather than importing another
plugin, so a family can use any registered noise model, schedule or network, built-in or not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .protocols import DataInfo
from .store import Store


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
      has no sampler, e.g. likelihood-only);
    - ``dataset`` / ``data``: the dataset object and its info; ``dataset.split("test")`` is the
      held-out reference;
    - ``family``: the trained family (EMA weights), ``sampler``: the sampler;
    - ``params``: this metric's parameters from the suite;
    - ``seed``, ``store``, ``build`` (as in :class:`BuildContext`);
    - ``resample(n)``: draw ``n`` fresh samples with the case's sampler and return a
      :class:`SampleOutput` (timed, with NFE), for throughput measurements;
    - ``artifact_dir``: write files here and they are logged with the case;
    - ``timings``: phase seconds measured so far; ``nfe``: NFE per sample of the main sampling.
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

    @property
    def data(self) -> DataInfo:
        return self.dataset.info

    def build(self, kind: str, spec: Any, **extra: Any) -> Any:
        return self.build_context.build(kind, spec, **extra)

    def log(self, message: str) -> None:
        self.build_context.log(message)
