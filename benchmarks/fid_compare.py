"""bench's ``fid`` metric vs a direct ``torch_fidelity.calculate_metrics`` call on the same images.

Data: digits8. "Generated" images: the 359 test images, repeated to ``--samples`` (default 1000)
with Gaussian noise of std 0.3 added (seeded), clamped to [-1, 1]. bench's reference is the split
the extractor was trained on (digits-classifier: train, 1438 images; random-proj: test).

Variants, interleaved over ``--repeats`` (each includes building the metric; ratios: median of
per-repeat ratios):

- bench, cold: ``fid`` built through the registry and computed with a ``MetricContext`` as the runner
  makes it, on a store without reference statistics (for digits-classifier the store holds the
  trained classifier, whose one-off training time is reported separately), and without the
  in-process caches (torch-fidelity module, generated features), as in a fresh worker;
- bench, warm: the same with the reference statistics in the store and the module cache kept
  (the generated-features cache is cleared: a new case has new samples);
- direct, cold: ``calculate_metrics(input1=generated, input2=reference, fid=True, cache=False)`` with
  the extractor's own kwargs (as tests/test_metrics_fidelity.py calls it);
- direct, warm: the same with torch-fidelity's own statistics cache for input2, already filled.

bench computes more than the direct call: features of the noise-floor sample (359 test images,
or train rows for random-proj), ``fid_floor``, and ``fid_at_floor_n`` when the floor sample is
smaller than the generated set. |FID difference| = |bench ``fid`` - direct FID| (same inputs).
"""
from __future__ import annotations

import shutil
import time

import torch

import _common as C


def main() -> None:
    p = C.parser(__doc__, repeats=15)
    p.add_argument("--samples", type=int, default=1000)
    args = p.parse_args()
    C.setup(args)
    if args.quick:
        args.repeats, args.samples = min(args.repeats, 3), min(args.samples, 400)
    import torch_fidelity

    from bench_metrics import fidelity
    from bench_metrics.extractors import to_uint8_rgb
    from bench_metrics.fidelity import ImageTensorDataset
    from bench_metrics.testing import metric_context

    regs = C.registries()
    dataset = regs.dataset.create({"name": "digits8"})
    test = dataset.split("test")
    gen = torch.Generator().manual_seed(0)
    reps = test.repeat((args.samples + len(test) - 1) // len(test), 1, 1, 1)[:args.samples]
    samples = (reps + 0.3 * torch.randn(reps.shape, generator=gen)).clamp(-1, 1)
    levels = dataset.info.levels
    rows = []
    for extractor in ("digits-classifier", "random-proj"):
        spec = {"name": "fid", "extractor": extractor}
        seed_dir = C.tempdir("fid-seed")
        ctx0 = metric_context(dataset, samples, store=seed_dir / "store")
        metric0 = regs.metric.create(spec, context=ctx0.build_context)
        start = time.perf_counter()
        metric0.extractor.prepare()  # the classifier's training (digits-classifier), or the projection
        prepare_s = time.perf_counter() - start
        reference = dataset.split(metric0.reference_split)
        kw = dict(input1=ImageTensorDataset(to_uint8_rgb(samples, levels)),
                  input2=ImageTensorDataset(to_uint8_rgb(reference, levels)), fid=True, cuda=False,
                  batch_size=64, verbose=False, save_cpu_ram=True, **metric0.extractor.fidelity_kwargs())
        warm_root = C.tempdir("fid-warm")
        warm_store = warm_root / "store"
        shutil.copytree(seed_dir / "store", warm_store)
        count = [0]

        def bench(cold: bool, check: bool = True):
            fidelity._GEN_CACHE.clear()
            if cold:
                fidelity._MODULES.clear()
                count[0] += 1
                store = seed_dir / f"cold{count[0]}"
                shutil.copytree(seed_dir / "store", store)
            ctx = metric_context(dataset, samples, store=store if cold else warm_store)
            start = time.perf_counter()
            out = regs.metric.create(spec, context=ctx.build_context).compute(ctx)
            seconds = time.perf_counter() - start
            assert not check or out["fid_ref_cached"] == (0.0 if cold else 1.0)
            return {"s": seconds, "fid": out["fid"]}

        def direct(cold: bool):
            start = time.perf_counter()
            cache = {"cache": False} if cold else {"cache": True, "cache_root": str(warm_root / "tf"),
                                                   "input2_cache_name": f"digits8-{extractor}"}
            out = torch_fidelity.calculate_metrics(**kw, **cache)
            return {"s": time.perf_counter() - start, "fid": out["frechet_inception_distance"]}

        bench(False, check=False), direct(False)  # fill both warm caches
        t = C.interleave({"bench cold": lambda: bench(True), "bench warm": lambda: bench(False),
                          "direct cold": lambda: direct(True), "direct warm": lambda: direct(False)},
                         args.repeats, warmup=False)
        diff = max(abs(a - b) for a in t["bench cold:fid"] + t["bench warm:fid"]
                   for b in t["direct cold:fid"] + t["direct warm:fid"])
        for state in ("cold", "warm"):
            b, d = t[f"bench {state}:s"], t[f"direct {state}:s"]
            r = C.ratio(t, f"bench {state}:s", f"direct {state}:s")
            rows.append([extractor, state, C.spread(b), C.spread(d), f"**{r:.3f}**", f"{diff:.1e}",
                         f"{C.med(t[f'bench {state}:fid']):.4f}"])
        rows[-2][0] += f" (prepare: {prepare_s:.2f} s once)"
    body = C.table(["extractor", "reference statistics", "bench s", "direct s", "bench / direct",
                    "max abs FID diff", "FID"], rows)
    notes = [f"digits8, {args.samples} noisy test images vs the reference split; {args.repeats} interleaved repeats",
             "bench also extracts the floor sample and computes `fid_floor` (and `fid_at_floor_n`); "
             "the direct call computes FID only"]
    C.emit("FID: bench metric vs torch_fidelity.calculate_metrics", body, args, notes)


if __name__ == "__main__":
    main()
