"""Build diffusion components outside a run, as the runner would (tests, notebooks)::

    from bench_diffusion.testing import build, dataset
    data = dataset("gaussian", dim=4)
    fam = build("family", {"name": "oracle_vp", "T": 1000}, data)
    smp = build("sampler", {"name": "ddim", "steps": 50}, data)
    x = smp.sample(fam, PerSampleRNG.for_indices(0, range(1000)))

Everything goes through the plugin manager's registries (``context.build``), with a throw-away
store; networks come from whatever plugin registers them (bench_nets). ``local_context`` makes a
context over a bare :class:`~bench.protocols.DataInfo` with extra networks (tests that must not
depend on another plugin's network).
"""
from __future__ import annotations

import tempfile
from typing import Any, Callable

from bench.context import BuildContext
from bench.store import Store


def registries():
    from bench.plugins import get_manager

    return get_manager().registries


def dataset(name: str, **params: Any) -> Any:
    return registries().dataset.create({"name": name, **params})


def context(data: Any, seed: int = 0, networks: dict[str, Callable[..., Any]] | None = None,
            log: Callable[[str], None] | None = None) -> BuildContext:
    """A BuildContext over ``data`` (a Dataset, or a DataInfo for dataset-free use). ``networks``
    maps extra network names to factories ``f(in_shape, **params)``."""
    store = Store(tempfile.mkdtemp(prefix="bench-diffusion-store-"))
    return BuildContext.from_registries(registries(), seed=seed, store=store, data=getattr(data, "info", data),
                                        dataset=data if hasattr(data, "split") else None, log=log,
                                        extra={("network", name): f for name, f in (networks or {}).items()})


def build(kind: str, spec: Any, data: Any, **kw: Any) -> Any:
    """Validate ``spec`` like a suite would (registry defaults and types) and build it."""
    regs = registries()
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    regs[kind].validate(spec["name"], {k: v for k, v in spec.items() if k not in ("name", "id")})
    return context(data, **kw).build(kind, spec)
