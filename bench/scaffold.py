"""``bench new-plugin NAME --kind KIND``: an installable plugin package with a working example.

The package has a ``pyproject.toml`` declaring the ``bench`` entry point, a plugin module that
registers one example component of the requested kind, the component itself, and a test that
builds it through bench's registries (so it checks the installed entry point, not just the class).
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import UserError

PYPROJECT = Template('''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A bench plugin providing the $kind '$component'"
requires-python = ">=3.10"
dependencies = ["bench"]

[project.entry-points.bench]
$name = "$name.plugin"

[tool.setuptools]
packages = ["$name"]
''')

PLUGIN = Template('''"""bench plugin '$name': registers the $kind '$component'."""
from bench.hookspecs import hookimpl


@hookimpl
def $hook(register):
    register("$component", "$name.component:$cls"$meta)
''')

COMPONENTS = {
    "dataset": ("Ring", ', modality="points"', '''"""A noisy ring of radius ``radius`` in 2-D: a dataset example."""
from typing import Annotated

import torch
from pydantic import Field

from bench.protocols import DataInfo


class Ring:
    def __init__(self, radius: Annotated[float, Field(gt=0)] = 1.0, noise: Annotated[float, Field(ge=0)] = 0.05,
                 n_train: Annotated[int, Field(gt=0)] = 4000, n_test: Annotated[int, Field(gt=0)] = 1000,
                 data_seed: int = 0):
        g = torch.Generator().manual_seed(data_seed)
        n = n_train + n_test
        angle = 2 * torch.pi * torch.rand(n, generator=g)
        pts = radius * torch.stack([angle.cos(), angle.sin()], 1) + noise * torch.randn(n, 2, generator=g)
        self._splits = {"train": pts[:n_train], "test": pts[n_train:]}
        self.info = DataInfo(name="ring", shape=(2,), modality="points")

    def split(self, name):
        return self._splits[name]
''', '''def test_ring_points_lie_near_the_circle(registries):
    ring = registries.dataset.create({"name": "$component", "radius": 2.0, "noise": 0.01})
    radii = ring.split("test").norm(dim=1)
    assert ring.split("train").shape == (4000, 2)
    assert abs(float(radii.mean()) - 2.0) < 0.01
'''),
    "metric": ("MeanGap", ', modalities=["points", "image"]', '''"""Distance between the sample mean and the test-set mean: a metric example."""


class MeanGap:
    def __init__(self, num_reference: int = 1000):
        self.num_reference = num_reference

    def compute(self, ctx):
        ref = ctx.dataset.split("test")[: self.num_reference].flatten(1)
        gen = ctx.samples.flatten(1)
        return {"mean_gap": float((gen.mean(0) - ref.mean(0)).norm())}
''', '''import types

import torch


def test_mean_gap_is_zero_for_the_reference_and_grows_with_shift(registries):
    metric = registries.metric.create({"name": "$component"})
    ref = torch.randn(500, 3)
    ctx = types.SimpleNamespace(samples=ref.clone(), dataset=types.SimpleNamespace(split=lambda name: ref))
    assert metric.compute(ctx)["mean_gap"] < 1e-6
    ctx.samples = ref + torch.tensor([3.0, 4.0, 0.0])
    assert abs(metric.compute(ctx)["mean_gap"] - 5.0) < 1e-4
'''),
    "noise": ("Diagonal", "", '''"""Noise with a diagonal covariance diag(scale^2): a noise-model example.

Operations on batches x of shape (B, *shape): sqrt(Sigma) z = scale * z, Sigma^-1 x = x / scale^2, ...
"""
import math
from typing import Annotated

import torch
from pydantic import Field


class Diagonal:
    def __init__(self, scale: Annotated[float, Field(gt=0)] = 0.5, context=None):
        self.scale = scale
        self.shape = tuple(context.data.shape) if context is not None and context.data else (1,)

    def sample(self, rng):
        return self.sqrt(rng.randn(*self.shape))

    def sqrt(self, z):
        return self.scale * z

    def inv_sqrt(self, x):
        return x / self.scale

    def cov(self, x):
        return self.scale ** 2 * x

    def inv_cov(self, x):
        return x / self.scale ** 2

    def logdet(self):
        return 2 * math.prod(self.shape) * math.log(self.scale)
''', '''import math

import torch


def test_diagonal_noise_operators_are_consistent(registries):
    noise = registries.noise.create({"name": "$component", "scale": 0.5})
    x = torch.randn(4, 1)
    assert torch.allclose(noise.inv_sqrt(noise.sqrt(x)), x)
    assert torch.allclose(noise.cov(noise.inv_cov(x)), x)
    assert math.isclose(noise.logdet(), 2 * math.log(0.5))
'''),
    "schedule": ("Exponential", "", '''"""beta_t growing geometrically from beta_start to beta_end: a schedule example."""
from typing import Annotated

import torch
from pydantic import Field


class Exponential:
    def __init__(self, beta_start: Annotated[float, Field(gt=0, lt=1)] = 1e-4,
                 beta_end: Annotated[float, Field(gt=0, lt=1)] = 0.02):
        self.beta_start, self.beta_end = beta_start, beta_end

    def betas(self, T: int) -> torch.Tensor:
        """beta_i = beta_start * (beta_end / beta_start) ** (i / (T - 1)), i = 0..T-1 (float64)."""
        i = torch.arange(T, dtype=torch.float64)
        return self.beta_start * (self.beta_end / self.beta_start) ** (i / max(T - 1, 1))
''', '''def test_exponential_schedule_endpoints(registries):
    betas = registries.schedule.create({"name": "$component"}).betas(1000)
    assert abs(float(betas[0]) - 1e-4) < 1e-12 and abs(float(betas[-1]) - 0.02) < 1e-12
    assert bool((betas[1:] > betas[:-1]).all())
'''),
    "network": ("ResidualMLP", "", '''"""A residual MLP f(x, t) for vectors: a network example (x: (B, D), t: (B,))."""
from typing import Annotated, Sequence

import torch
from pydantic import Field
from torch import nn


class ResidualMLP(nn.Module):
    def __init__(self, in_shape: Sequence[int], hidden: Annotated[int, Field(gt=0)] = 128):
        super().__init__()
        self.in_shape = tuple(in_shape)
        d = int(torch.tensor(self.in_shape).prod())
        self.net = nn.Sequential(nn.Linear(d + 1, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x, t, cond=None):
        h = torch.cat([x.flatten(1), t.reshape(-1, 1).float() / 1000], 1)
        return (x.flatten(1) + self.net(h)).reshape(x.shape)
''', '''import torch


def test_residual_mlp_keeps_the_shape(registries):
    net = registries.network.create({"name": "$component", "in_shape": (3,)})
    x = torch.randn(5, 3)
    assert net(x, torch.zeros(5)).shape == (5, 3)
'''),
    "executor": ("ThreadExecutor", "", '''"""Runs cases in a thread pool: an executor example (workers compute; the driver logs)."""
from concurrent.futures import ThreadPoolExecutor, as_completed

from bench.runner import run_case


class ThreadExecutor:
    def __init__(self, workers: int | None = None, **_):
        self.workers = workers or 2

    def run(self, jobs, on_result):
        with ThreadPoolExecutor(self.workers) as pool:
            for fut in as_completed([pool.submit(run_case, job) for job in jobs]):
                on_result(fut.result())
''', '''def test_thread_executor_returns_every_result(registries, monkeypatch):
    import $name.component as mod

    monkeypatch.setattr(mod, "run_case", lambda job: {"job": job})
    got = []
    registries.executor.create({"name": "$component", "workers": 2}).run([1, 2, 3], got.append)
    assert sorted(r["job"] for r in got) == [1, 2, 3]
'''),
    "family": ("GaussianFit", ', provides=["gaussian"], modalities=["points"]', '''"""Fits a Gaussian N(mu, diag(sigma^2)) by maximum likelihood with SGD: a family example.

loss(x) = mean over the batch of -log N(x; mu, diag(exp(2 log_sigma))) / D.
"""
import math

import torch
from torch import nn


class GaussianFit(nn.Module):
    provides = frozenset({"gaussian"})
    trainable = True

    def __init__(self, context=None):
        super().__init__()
        shape = tuple(context.data.shape) if context is not None and context.data else (2,)
        self.shape = shape
        self.mu = nn.Parameter(torch.zeros(shape))
        self.log_sigma = nn.Parameter(torch.zeros(shape))

    def loss(self, x, rng):
        z = (x - self.mu) / self.log_sigma.exp()
        nll = 0.5 * z.pow(2) + self.log_sigma + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(1).mean() / z[0].numel()

    def nfe_modules(self):
        return []
''', '''import torch


def test_gaussian_fit_loss_is_the_gaussian_nll(registries):
    fam = registries.family.create({"name": "$component"})
    x = torch.zeros(10, 2)
    # at mu=0, sigma=1 the per-dimension NLL of 0 is log(2 pi) / 2
    assert abs(float(fam.loss(x, None)) - 0.9189385) < 1e-6
'''),
    "feature_extractor": ("MeanPool", "", '''"""Average-pools images to a 4x4 grid and flattens: a (toy) feature-extractor example."""
import torch
import torch.nn.functional as F


class MeanPool:
    def __init__(self, grid: int = 4):
        self.grid = grid

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), self.grid).flatten(1)
''', '''import torch


def test_mean_pool_features_have_fixed_size(registries):
    fx = registries.feature_extractor.create({"name": "$component"})
    assert fx(torch.rand(3, 1, 8, 8)).shape == (3, 16)
'''),
}

CONFTEST = '''import pytest


@pytest.fixture
def registries():
    from bench.plugins import get_manager

    manager = get_manager(fresh=True)
    assert manager.infos["$name"].status == "ok", manager.infos["$name"].error
    return manager.registries
'''

HOOKS = {"dataset": "bench_register_datasets", "noise": "bench_register_noise_models",
         "schedule": "bench_register_schedules", "family": "bench_register_families",
         "sampler": "bench_register_samplers", "network": "bench_register_networks",
         "metric": "bench_register_metrics", "feature_extractor": "bench_register_feature_extractors",
         "executor": "bench_register_executors"}


def write_plugin(name: str, kind: str, directory: Path | None = None) -> Path:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"plugin name '{name}' must be a lowercase Python identifier, e.g. my_sampler")
    extra = extra_templates()
    if kind not in COMPONENTS and kind not in extra:
        from .errors import did_you_mean

        close = did_you_mean(kind, HOOKS)
        raise UserError(f"unknown kind '{kind}'", hint=f"did you mean '{close}'?" if close else
                        f"kinds: {', '.join(sorted(HOOKS))}")
    root = Path(directory or name)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty")
    cls, meta, module, test = {**COMPONENTS, **extra}[kind]
    component = f"{name}_example"
    subs = {"name": name, "dist": name.replace("_", "-"), "kind": kind, "component": component, "cls": cls,
            "meta": meta, "hook": HOOKS[kind]}
    pkg = root / name
    (root / "tests").mkdir(parents=True, exist_ok=True)
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT.substitute(subs))
    (pkg / "__init__.py").write_text(f'"""bench plugin {name}."""\n')
    (pkg / "plugin.py").write_text(PLUGIN.substitute(subs))
    (pkg / "component.py").write_text(module)
    (root / "tests" / "conftest.py").write_text(Template(CONFTEST).substitute(subs))
    (root / "tests" / f"test_{name}.py").write_text(Template(test).substitute(subs))
    (root / "README.md").write_text(
        f"# {name}\n\nA bench plugin providing the {kind} `{component}`.\n\n"
        f"```\npip install -e .\nbench plugins        # shows {name}\npytest tests\n```\n\n"
        f"Use it in a suite by name: `{component}`.\n")
    return root


def extra_templates() -> dict:
    """Templates that depend on public interfaces of the built-in plugins (e.g. VP families)."""
    try:
        from .scaffold_sampler import SAMPLER_TEMPLATE
    except ImportError:
        return {}
    return {"sampler": SAMPLER_TEMPLATE}
