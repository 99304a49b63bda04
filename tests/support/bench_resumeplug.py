"""A plugin for tests/test_resume.py (loaded with ``--plugins bench_resumeplug``).

``denoiser`` is a small real denoising family whose training reads every random stream a training
has: the noise level and the noise from the training generator (``rng``), the dropout masks from
torch's global generator, and a buffer that counts the steps. With ``$BENCH_RESUME_STOP_AT=N`` its
N-th loss call in this process raises (an interrupted training); ``sleep_s`` makes every step slow.
"""
from __future__ import annotations

import os
import time

import torch
from torch import nn

from bench.hookspecs import hookimpl


class Denoiser(nn.Module):
    """loss = E || f(sqrt(1 - t) x + sqrt(t) eps, t) - eps ||^2 with t ~ U(0, 1), eps ~ N(0, I)."""

    trainable = True

    def __init__(self, hidden: int = 32, dropout: float = 0.1, sleep_s: float = 0.0, context=None):
        super().__init__()
        self.sleep_s = sleep_s
        dim = context.data.dim
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.calls = 0

    def loss(self, x, rng):
        self.calls += 1
        time.sleep(self.sleep_s)
        if self.calls == int(os.environ.get("BENCH_RESUME_STOP_AT", "0")):
            raise RuntimeError(f"deliberate interruption at loss call {self.calls}")
        x = x.flatten(1)
        t = rng.rand(1)
        eps = rng.randn(x.shape[1])
        xt = (1 - t).sqrt() * x + t.sqrt() * eps
        self.steps_seen += 1
        return (self.net(torch.cat([xt, t], 1)) - eps).pow(2).mean()

    def nfe_modules(self):
        return [self.net]


@hookimpl
def bench_register_families(register):
    register("denoiser", Denoiser, provides=["denoiser"])
