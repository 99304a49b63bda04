"""Patch-shuffled images (thesis section 4.7.1): cut each image into p x p patches and put the
patches back in a random order (independently per image). p = 1 shuffles pixels; p = image size is
the identity. A feature space that encodes shape, not just local appearance, should place shuffled
images further from the data the smaller p is.
"""
from __future__ import annotations

import torch


def shuffle_patches(x: torch.Tensor, patch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` with H and W multiples of ``patch`` -> the same images with their patches permuted."""
    n, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {h}x{w}")
    gh, gw = h // patch, w // patch
    # (N, C, gh, p, gw, p) -> (N, gh*gw, C, p, p)
    tiles = x.reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c, patch, patch)
    order = torch.argsort(torch.rand(n, gh * gw, generator=generator), dim=1)
    tiles = tiles[torch.arange(n)[:, None], order]
    return tiles.reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def patch_shuffle_table(dataset, store, extractor: str = "digits-classifier", seed: int = 0,
                        resamples: int = 200) -> dict:
    """FID between the train split (reference) and the test split with k x k patches shuffled, for
    every k dividing the image size, plus uniform noise images (the table in docs/results.md section 3),
    each with its 95% bootstrap interval over both sets (``resamples`` resamples, recentred as the
    ``fid`` metric's: :mod:`bench_metrics.bootstrap`; 0: none)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from . import bootstrap
    from .extractors import to_uint8_rgb
    from .fidelity import extract_features, fid_from_stats, real_features
    from .testing import build_context

    ctx = build_context(dataset, store, seed)
    ext = ctx.build("feature_extractor", extractor)
    ext.prepare()
    info = dataset.info
    ref = real_features(ext, dataset.split("train"), info, "train", True, 64, ctx.store)
    test = dataset.split("test")

    intervals: dict[str, tuple[float, float]] = {}

    def fid(name, images):
        feats = extract_features(ext, to_uint8_rgb(images, info.levels), 64)
        value = fid_from_stats(fid_features_to_statistics(feats), ref.stats)
        if resamples:
            rg, rr = bootstrap.draw(resamples, len(feats), len(ref.features), tag=f"patches-{name}")
            reps = bootstrap.frechet_replicates(feats.double(), ref.features.double(), rg, rr)
            intervals[name] = bootstrap.percentile_interval(reps, value)
        return value

    size = info.shape[-1]
    rows = {f"{p}x{p}": fid(f"{p}x{p}", shuffle_patches(test, p, torch.Generator().manual_seed(seed)))
            for p in (1, 2, 4, 8, 16, 32) if size % p == 0}
    rows["noise"] = fid("noise", torch.rand(test.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    return {"dataset": info.name, "extractor": ext.describe(), "n_test": len(test), "n_train": len(ref.features),
            "fid": rows, "fid_ci": intervals, **ext.metrics()}


if __name__ == "__main__":  # python -m bench_metrics.patches [store]
    import sys

    from .testing import _tempdir, registries

    store = sys.argv[1] if len(sys.argv) > 1 else _tempdir("bench-store-")
    for name in ("digits8", "digits16"):
        ds = registries().dataset.create({"name": name})
        for extractor in ("digits-classifier", "random-proj"):
            t = patch_shuffle_table(ds, store, extractor)
            print(name, extractor, {k: f"{v:.3f} [{t['fid_ci'][k][0]:.3f}, {t['fid_ci'][k][1]:.3f}]"
                                    for k, v in t["fid"].items()},
                  {k: v for k, v in t.items() if k.startswith("extractor_")})
