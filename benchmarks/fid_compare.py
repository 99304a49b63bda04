"""bench's ``fid`` metric vs a direct ``torch_fidelity.calculate_metrics`` call on the same images.

Data: 20,000 random 8-bit 3 x 32 x 32 images made by the script (train 10,000, test 10,000; a data set
object as a loader gives it). "Generated" images: ``--samples`` (default 10,000) train images with
Gaussian noise of std 0.3 added (seeded), clamped to [-1, 1]. Extractor ``random-proj`` (64-d; on the
CPU, as Inception would be too slow here); its reference is the test split (10,000 images), and
bench's noise-floor sample is ``--samples`` train images.

Both sides start from the same model-space tensors, so the direct call's time includes the uint8
conversion (``to_uint8_rgb``) of what it feeds torch-fidelity, as any caller's would. Variants,
interleaved over ``--repeats`` (ratios: median of per-repeat ratios):

- bench cold: ``fid`` built through the registry and computed with a ``MetricContext`` as the runner
  makes it, on an empty store and without the in-process caches (torch-fidelity module, generated
  features, digests of the real sets), as in a fresh worker; with its default noise floor, and with ``floor: false``;
- bench warm: the reference and floor features in the store and the real sets' digests in memory
  (another case of the same worker computed them), module cache kept, generated-features cache
  cleared (a new case has new samples);
- direct cold: ``calculate_metrics(input1=generated, input2=reference, fid=True, cache=False)`` with the
  extractor's own kwargs;
- direct warm: the same with torch-fidelity's statistics cache for input2 already filled.

Targets (issue 15): bench cold without the floor within 1.05 of direct cold; bench warm at least 1.8
times faster than direct cold.
"""
from __future__ import annotations

import shutil
import time

import torch

import _common as C


class Images:
    """Random 8-bit images as a data set (``split``, ``info``), 10,000 per split."""

    def __init__(self, n: int = 10000, size: int = 32):
        from bench.protocols import DataInfo

        gen = torch.Generator().manual_seed(0)
        k = torch.randint(0, 256, (2 * n, 3, size, size), generator=gen)
        x = k.float() * (2 / 255) - 1
        self.splits = {"train": x[:n], "test": x[n:]}
        self.info = DataInfo(name=f"random{size}", shape=(3, size, size), modality="image", levels=256)

    def split(self, name: str) -> torch.Tensor:
        return self.splits[name]


def main() -> None:
    p = C.parser(__doc__, repeats=5)
    p.add_argument("--samples", type=int, default=10000)
    args = p.parse_args()
    C.setup(args)
    if args.quick:
        args.repeats, args.samples = min(args.repeats, 2), min(args.samples, 1000)
    import torch_fidelity

    from bench_metrics import fidelity
    from bench_metrics.extractors import to_uint8_rgb
    from bench_metrics.fidelity import ImageTensorDataset
    from bench_metrics.testing import metric_context

    regs = C.registries()
    dataset = Images(n=max(args.samples, 1000))
    gen = torch.Generator().manual_seed(1)
    base = dataset.split("train")[:args.samples]
    samples = (base + 0.3 * torch.randn(base.shape, generator=gen)).clamp(-1, 1)
    levels = dataset.info.levels
    spec = {"name": "fid", "extractor": "random-proj", "bootstrap": 0}
    seed_dir = C.tempdir("fid-seed")
    ctx0 = metric_context(dataset, samples, store=seed_dir / "store")
    metric0 = regs.metric.create(spec, context=ctx0.build_context)
    metric0.extractor.prepare()  # the projection's weights in the store, shared by every variant
    reference = dataset.split(metric0.reference_split)
    kw = dict(fid=True, cuda=False, batch_size=64, verbose=False, save_cpu_ram=True,
              **metric0.extractor.fidelity_kwargs())
    warm_root = C.tempdir("fid-warm")
    shutil.copytree(seed_dir / "store", warm_root / "store")
    count = [0]

    def bench(cold: bool, floor: bool = True, check: bool = True):
        fidelity._GEN_CACHE.clear()
        if cold:
            fidelity._MODULES.clear()
            fidelity._DIGESTS.clear()
            count[0] += 1
            store = seed_dir / f"cold{count[0]}"
            shutil.copytree(seed_dir / "store", store)
        ctx = metric_context(dataset, samples, store=store if cold else warm_root / "store")
        start = time.perf_counter()
        out = regs.metric.create({**spec, "floor": floor}, context=ctx.build_context).compute(ctx)
        seconds = time.perf_counter() - start
        assert not check or out["fid_ref_cached"] == (0.0 if cold else 1.0)
        if cold:
            shutil.rmtree(store)
        return {"s": seconds, "fid": out["fid"]}

    def direct(cold: bool):
        start = time.perf_counter()
        cache = {"cache": False} if cold else {"cache": True, "cache_root": str(warm_root / "tf"),
                                               "input2_cache_name": "random32-random-proj"}
        out = torch_fidelity.calculate_metrics(input1=ImageTensorDataset(to_uint8_rgb(samples, levels)),
                                               input2=ImageTensorDataset(to_uint8_rgb(reference, levels)),
                                               **kw, **cache)
        return {"s": time.perf_counter() - start, "fid": out["frechet_inception_distance"]}

    bench(False, check=False), direct(False)  # fill both warm caches
    t = C.interleave({"bench cold": lambda: bench(True), "bench cold, floor off": lambda: bench(True, False),
                      "bench warm": lambda: bench(False), "direct cold": lambda: direct(True),
                      "direct warm": lambda: direct(False)}, args.repeats, warmup=False)
    fids = [v for k, vs in t.items() if k.endswith(":fid") for v in vs]
    diff = max(fids) - min(fids)
    rows = []
    for name in ("bench cold", "bench cold, floor off", "bench warm", "direct cold", "direct warm"):
        rows.append([name, C.spread(t[f"{name}:s"]), f"**{C.ratio(t, f'{name}:s', 'direct cold:s'):.3f}**",
                     f"{C.ratio(t, f'{name}:s', 'direct warm:s'):.3f}", f"{C.med(t[f'{name}:fid']):.4f}"])
    body = C.table(["variant", "seconds, median [min-max]", "/ direct cold", "/ direct warm", "FID"], rows)
    notes = [f"random 8-bit 3x32x32 images, {args.samples} noisy train images vs the {len(reference)} test images "
             f"in random-proj features (64-d); {args.repeats} interleaved repeats",
             f"max FID difference between all variants and repeats: {diff:.1e}",
             "bench with its floor also extracts the noise-floor sample and computes `fid_floor`; the direct call "
             "computes FID only; both include the uint8 conversion of their inputs"]
    C.emit("FID: bench metric vs torch_fidelity.calculate_metrics", body, args, notes)


if __name__ == "__main__":
    main()
