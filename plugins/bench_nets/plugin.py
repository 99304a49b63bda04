"""Built-in networks: an MLP with a time embedding (vectors) and a small UNet (8x8 / 16x16 images)."""
from __future__ import annotations

from bench.hookspecs import hookimpl


@hookimpl
def bench_register_networks(register):
    register("mlp", "bench_nets.mlp:TimeMLP", description="MLP for vectors, sinusoidal time embedding")
    register("unet", "bench_nets.unet:SmallUNet", description="small UNet for 8x8/16x16/32x32 images")
    register("spatin_unet", "bench_nets.spatin_unet:SpatinUNet",
             description="small UNet with SPATIN (SPADE-like) conditioning on extra frames (MCVD, thesis 7.2.4)")
