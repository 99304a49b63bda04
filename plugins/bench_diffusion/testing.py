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


class OracleMoments:
    """Samples of a sampler on an exact oracle family over Gaussian data, against the data's stated
    mean and covariance: ``errors(spec)`` is (max |mean error|, relative Frobenius covariance error),
    with their Monte Carlo scales ``mean_se`` (sqrt(max_d Sigma_dd / n)) and ``cov_se``
    (sqrt((tr(Sigma)^2 + |Sigma|_F^2) / n) / |Sigma|_F, the Frobenius norm's sampling scale)."""

    def __init__(self, family: str, name: str, noise: str, n: int, **data_params: Any):
        import math

        import numpy as np

        self.n = n
        self.data = dataset(name, n_train=10, n_test=10, **data_params)
        self.m = np.array(self.data.info.params["mean"], np.float64).ravel()
        self.c = np.array(self.data.info.params["cov"], np.float64)
        fro = np.linalg.norm(self.c)
        self.cov_se = math.sqrt((np.trace(self.c) ** 2 + fro ** 2) / n) / fro
        self.mean_se = math.sqrt(np.diag(self.c).max() / n)
        self.fam = build("family", {"name": family, "noise": noise}, self.data)

    def errors(self, spec: Any, seed: int = 1) -> tuple[float, float]:
        import numpy as np
        import torch

        from bench.rng import BatchRNG

        smp = build("sampler", spec, self.data)
        with torch.no_grad():
            x = smp.sample(self.fam, BatchRNG(seed, self.n)).reshape(self.n, -1).double()
        assert torch.isfinite(x).all()
        err_m = float(np.abs(x.mean(0).numpy() - self.m).max())
        err_c = float(np.linalg.norm(np.cov(x.numpy().T) - self.c) / np.linalg.norm(self.c))
        return err_m, err_c


def oracle_moments(family: str, which: str) -> OracleMoments:
    """The two standard cases: ``iso`` (4-d isotropic Gaussian, 8000 samples) and ``gff`` (a 1x4x4
    Gaussian image under GFF noise, 3000 samples)."""
    if which == "gff":
        return OracleMoments(family, "gaussian_image", "gff", 3000, size=4)
    return OracleMoments(family, "gaussian", "isotropic", 8000, dim=4)


def count_network_calls(family: Any, fn: Callable[[], Any]) -> tuple[int, Any]:
    """(number of forward calls of ``family.nfe_modules()`` during ``fn()``, its result): the NFE an
    independent counter sees, to compare with what a sampler reports."""
    calls = [0]
    hooks = [m.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in family.nfe_modules()]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return calls[0], out


def held_out_loss_after_training(family: Any, data: Any, steps: int = 150, batch: int = 128,
                                 lr: float = 3e-3) -> tuple[float, float]:
    """(held-out loss before, after) ``steps`` Adam steps of ``family.loss`` on minibatches of the
    train split; the held-out loss uses the test split with fixed noise (stream 7)."""
    import torch

    from bench.rng import BatchRNG

    train, test = data.split("train"), data.split("test")

    def held_out() -> float:
        with torch.no_grad():
            return float(family.loss(test, BatchRNG(7, len(test))))

    before = held_out()
    opt = torch.optim.Adam(family.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.randint(len(train), (batch,))
        loss = family.loss(train[idx], BatchRNG(step, batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, held_out()
