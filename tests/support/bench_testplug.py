"""A plugin used by the core tests (loaded with ``--plugins bench_testplug``).

It is small but real: ``fitgauss`` fits a diagonal Gaussian by maximum likelihood, ``gauss`` samples
from it, ``mean_err`` measures how far the sample mean is from the test mean. ``crash`` and ``nanloss``
fail on purpose; ``counting`` counts how often it is constructed and trained.

Hostile modes for the reliability tests: the sampler's ``crash`` is one of ``segfault`` (the process
dies), ``raise``, ``exit`` (``sys.exit(3)``), ``interrupt`` (raises KeyboardInterrupt), ``base`` (a
bare BaseException subclass) or ``hang`` (sleeps for 10**6 s); the family's ``fail_at: hang`` sleeps
in the first training step. With ``$BENCH_TEST_PID_DIR`` set, every sampler call writes
``<pid>.pid`` there (the tests look for surviving workers).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch
from torch import nn

from bench.context import MetricSkipped
from bench.hookspecs import hookimpl


class FitGauss(nn.Module):
    """loss = mean NLL per dimension of N(mu, diag(exp(2 s)))."""

    provides = frozenset({"gauss"})
    trainable = True

    def __init__(self, init_scale: float = 1.0, fail_at: str = "", context=None):
        super().__init__()
        if fail_at == "build":
            raise RuntimeError("deliberate failure while building")
        shape = context.data.shape
        self.fail_at = fail_at
        self.mu = nn.Parameter(torch.zeros(shape))
        self.s = nn.Parameter(torch.full(shape, math.log(init_scale)))
        self.head = nn.Identity()  # the "network" whose calls count as NFE
        marker = os.environ.get("BENCH_TEST_TRAIN_MARKER")
        if marker:
            with open(marker, "a") as fh:
                fh.write("built\n")

    def loss(self, x, rng):
        if self.fail_at == "hang":
            time.sleep(10**6)
        if self.fail_at == "nan":
            return torch.tensor(float("nan"), requires_grad=True) + 0 * self.mu.sum()
        z = (x - self.mu) / self.s.exp()
        return (0.5 * z.pow(2) + self.s + 0.5 * math.log(2 * math.pi)).mean()

    def nfe_modules(self):
        return [self.head]


class GaussSampler:
    requires = frozenset({"gauss"})

    def __init__(self, steps: int = 3, sleep_s: float = 0.0, crash: str = ""):
        self.steps = steps
        self.sleep_s = sleep_s
        self.crash = crash

    def sample(self, family, rng):
        pid_dir = os.environ.get("BENCH_TEST_PID_DIR")
        if pid_dir:
            open(os.path.join(pid_dir, f"{os.getpid()}.pid"), "w").close()
        if self.crash == "segfault":  # a worker process dying hard
            os.kill(os.getpid(), 9)
        if self.crash == "raise":
            raise ValueError("sampler blew up")
        if self.crash == "exit":
            sys.exit(3)
        if self.crash == "interrupt":
            raise KeyboardInterrupt("raised by the sampler's code")
        if self.crash == "base":
            raise Hostile("a bare BaseException")
        if self.crash == "hang":
            time.sleep(10**6)
        x = rng.randn(*family.mu.shape)
        for _ in range(self.steps):
            family.head(x)
            if self.sleep_s:
                time.sleep(self.sleep_s)
        return family.mu + family.s.exp() * x


class Hostile(BaseException):
    """Not an Exception: what a careless component might raise."""


class OtherSampler(GaussSampler):
    requires = frozenset({"something-else"})


class MeanErr:
    def __init__(self, skip: bool = False):
        self.skip = skip

    def compute(self, ctx):
        if self.skip:
            raise MetricSkipped("asked to skip")
        ref = ctx.dataset.split("test").flatten(1)
        return {"mean_err": float((ctx.samples.flatten(1).mean(0) - ref.mean(0)).norm())}


@hookimpl
def bench_register_families(register):
    register("fitgauss", FitGauss, provides=["gauss"])


@hookimpl
def bench_register_samplers(register):
    register("gauss", GaussSampler, requires=["gauss"])
    register("other", OtherSampler, requires=["something-else"])


@hookimpl
def bench_register_metrics(register):
    register("mean_err", MeanErr, modalities=["points", "image"])
