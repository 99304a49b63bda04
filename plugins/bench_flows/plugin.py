"""bench_flows: continuous normalizing flows (``cnf``, ``mrcnf``), the latent neural ODE for video
(``latent_ode``; measured by ``bench_metrics``' ``video``), the ``ode`` sampler and the ``ode_stats`` metric.

The math is in shared/reference/flows-math.md; each module's docstring cites its section.
"""
from __future__ import annotations

from bench.hookspecs import hookimpl


@hookimpl
def bench_register_families(register):
    register("cnf", "bench_flows.cnf:CNF", provides=["flow", "likelihood", "ode"], modalities=["points", "image"],
             description="FFJORD/RNODE continuous normalizing flow (exact or Hutchinson trace, adjoint optional)")
    register("mrcnf", "bench_flows.mrcnf:MRCNF", provides=["flow", "likelihood", "ode", "multires"],
             modalities=["image"],
             description="multi-resolution CNF (Voleti ch. 4): haar or unimodular 2x2 map, 1-3 resolutions")
    register("latent_ode", "bench_flows.latent_ode:LatentODE", provides=["ode", "video", "video_predict"], modalities=["video"],
             description="latent neural ODE for video (Voleti ch. 3): deterministic or VAE variant")


@hookimpl
def bench_register_samplers(register):
    register("ode", "bench_flows.sampler:ODESampler", requires=["flow"],
             description="integrate a flow from temperature-scaled Gaussian noise back to data (torchdiffeq)")


@hookimpl
def bench_register_metrics(register):
    register("ode_stats", "bench_flows.stats:ODEStats", requires=["ode"],
             description="training NFE per step (forward/backward), parameters per level, solver settings")
