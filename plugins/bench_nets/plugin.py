"""Built-in networks: an MLP with a time embedding (vectors) and a UNet (small, or the DDPM CIFAR-10 layout)."""
from __future__ import annotations

from bench.hookspecs import hookimpl


@hookimpl
def bench_register_networks(register):
    register("mlp", "bench_nets.mlp:TimeMLP", description="MLP for vectors, sinusoidal time embedding")
    register("unet", "bench_nets.unet:unet",
             description="UNet: small (default, 8x8 to 32x32) or config ddpm / ddpm_cifar10 (Ho et al. 2020, 32x32 / 64x64)")
    register("spatin_unet", "bench_nets.spatin_unet:SpatinUNet",
             description="small UNet with SPATIN (SPADE-like) conditioning on extra frames (MCVD, thesis 7.2.4)")
