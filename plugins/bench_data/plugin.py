"""Built-in datasets: toy 2-D sets, Gaussians, sklearn digits (8x8 and 16x16), moving digits video,
and images from disk (a folder, CIFAR-10/100, an .npz file)."""
from __future__ import annotations

from bench.hookspecs import hookimpl

TOY2D = ("8gaussians", "moons", "checkerboard", "swissroll", "circles", "2spirals")


@hookimpl
def bench_register_datasets(register):
    for which in TOY2D:
        register(f"toy2d/{which}", "bench_data.toy2d:Toy2D", defaults={"which": which}, modality="points",
                 description=f"2-D toy set '{which}' (generated; train/test split)")
    register("toy2d", "bench_data.toy2d:Toy2D", modality="points", description="2-D toy sets; pick with which=")
    register("gaussian", "bench_data.gaussian:GaussianData", modality="points",
             description="a Gaussian in any dimension with known mean and covariance (for oracles)")
    register("gmm", "bench_data.gaussian:MixtureData", modality="points",
             description="a Gaussian mixture in any dimension with known parameters (for oracles)")
    register("digits8", "bench_data.digits:Digits", defaults={"size": 8}, modality="image",
             description="sklearn's bundled 8x8 digits, 17 grey levels")
    register("digits16", "bench_data.digits:Digits", defaults={"size": 16}, modality="image",
             description="sklearn digits upsampled to 16x16 and requantised to 8 bits")
    register("image_folder", "bench_data.folder:ImageFolder", modality="image",
             description="your own images: every PNG/JPEG under a local directory (class labels from "
                         "subfolders), resized or at their own resolution, greyscale or RGB")
    register("cifar10", "bench_data.cifar:CIFAR10", modality="image",
             description="CIFAR-10 from a local copy of the python version (root=), 8-bit 32x32 RGB, 10 labels")
    register("cifar100", "bench_data.cifar:CIFAR100", modality="image",
             description="CIFAR-100 from a local copy of the python version (root=), 8-bit 32x32 RGB, 100 fine labels")
    register("npz", "bench_data.npz:NPZImages", modality="image",
             description="images from an .npz file (path=): x (N, C, H, W) uint8 or float in [-1, 1], optional labels y")
    register("moving_digits", "bench_data.moving_digits:MovingDigits", modality="video",
             description="Moving-MNIST-style 32x32 videos of 1 or 2 bouncing sklearn digits, 20 frames")
