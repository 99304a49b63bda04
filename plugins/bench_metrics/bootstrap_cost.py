"""The added cost of the bootstrap intervals, per metric, on quickstart-sized sets (docs/metrics.md).

    python -m bench_metrics.bootstrap_cost [--num-samples 500] [--resamples 200] [--repeats 3] [--only swd fid]

"Generated" samples are real train rows (no model is needed to time a metric); each metric runs
with ``bootstrap: 0`` and with ``bootstrap: B`` on the same context, after one warm-up run that fills
the reference-feature store, and the table gives the median seconds of each and their difference.
"""
from __future__ import annotations

import argparse
import statistics
import time

from .common import fixed_subset
from .testing import metric_context, registries

CASES = (  # (metric spec, dataset)
    ({"name": "swd"}, "toy2d/8gaussians"),
    ({"name": "mmd"}, "toy2d/8gaussians"),
    ({"name": "energy"}, "toy2d/8gaussians"),
    ({"name": "moments"}, "gaussian_image"),
    ({"name": "fid", "extractor": "digits-classifier"}, "digits8"),
    ({"name": "kid", "extractor": "digits-classifier"}, "digits8"),
    ({"name": "prc", "extractor": "digits-classifier"}, "digits8"),
)


def seconds(spec: dict, ctx, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        metric = registries()["metric"].create(spec, context=ctx.build_context)
        t0 = time.perf_counter()
        metric.compute(ctx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="metric names (default all)")
    a = ap.parse_args(argv)
    print(f"| metric | dataset | n | without (s) | with B = {a.resamples} (s) | added (s) |")
    print("|---|---|---|---|---|---|")
    for spec, name in CASES:
        if a.only and spec["name"] not in a.only:
            continue
        data = registries()["dataset"].create({"name": name})
        ctx = metric_context(data, fixed_subset(data.split("train"), a.num_samples, "bootstrap-cost"))
        registries()["metric"].create({**spec, "bootstrap": 0}, context=ctx.build_context).compute(ctx)  # warm-up
        off = seconds({**spec, "bootstrap": 0}, ctx, a.repeats)
        on = seconds({**spec, "bootstrap": a.resamples}, ctx, a.repeats)
        print(f"| {spec['name']} | {name} | {len(ctx.samples)} | {off:.2f} | {on:.2f} | {on - off:.2f} |")


if __name__ == "__main__":
    main()
