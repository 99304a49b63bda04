"""Peak memory (RSS) of a full-size FID at 32x32 on the CPU, against the number of samples.

Each count runs ``bench run`` in a fresh process on a one-case suite: an ``npz`` data set of 20,000
random 8-bit 3 x 32 x 32 images written by the script (10,000 train, 10,000 test; its size does not
depend on the count, and loading it is light, so the peak is not set by building the data), family
``ddpm`` with a small untrained MLP (``train.steps: 0``: a cheap sampler, the samples' quality is not
the point), ``ddim`` with 1 step, samples in chunks of ``eval.batch_size`` 500, metrics ``fid`` and
``kid`` in ``random-proj`` features (64-d; Inception is not needed to measure memory). The case's
``peak_rss_mb`` (the case worker's peak resident set, ``getrusage``) is read from its record.

``--paths streamed,held`` also runs each count with a metric without a streaming form (``swd``) and
``eval.hold_samples`` raised so that it gets the whole tensor: the memory the streamed path saves.
The floor sample is capped by the 10,000 train images (logged by the metric), so the reference and
floor features are the same at every count above 10,000.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

SUITE = """
name: memory
store: {store}
results: {results}
defaults:
  train: {{steps: 0}}
  eval: {{num_samples: {n}, batch_size: 500, grid: 0{hold}}}
matrix:
  dataset: [{{name: npz, path: {data}, test_fraction: 0.5}}]
  family: [{{name: ddpm, network: {{name: mlp, hidden: 64, layers: 1}}}}]
  sampler: [{{name: ddim, steps: 1}}]
metrics:
  - {{name: fid, extractor: random-proj, bootstrap: 0}}
  - {{name: kid, extractor: random-proj, bootstrap: 0}}
{extra}"""


def run(n: int, held: bool, work: Path, threads: int) -> dict:
    d = work / f"{'held' if held else 'stream'}-{n}"
    d.mkdir()
    text = SUITE.format(data=work / "images.npz", store=work / "store", results=d / "results", n=n,
                        hold=f", hold_samples: {n}" if held else "",
                        extra="  - {name: swd, bootstrap: 0}\n" if held else "")
    suite = C.write_suite(d, text)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(suite), "--quiet", "--threads", str(threads),
                          "--tracking-uri", f"sqlite:///{d / 'mlflow.db'}"], cwd=d, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = list((d / "results").rglob("record.json"))
    if out.returncode != 0 or not records:
        raise SystemExit(f"bench run failed for n={n}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    rec = json.loads(records[0].read_text())
    if rec["status"] != "ok":
        raise SystemExit(f"case failed for n={n}: {rec.get('error')}")
    m = rec["metrics"]
    return {"n": n, "held": held, "rss": m["peak_rss_mb"], "fid": m["fid"], "floor_n": m["fid_floor_num_samples"],
            "sample_s": m["sample_time_s"], "metric_s": m.get("metric_time_s", 0.0), "wall": wall}


def main() -> None:
    p = C.parser(__doc__, repeats=1)
    p.add_argument("--counts", default="5000,20000,50000", help="sample counts, comma-separated")
    p.add_argument("--paths", default="streamed", help="streamed, held (whole tensor held for swd), or both: "
                   "streamed,held")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.quick:
        counts = [1000, 4000]
    work = C.tempdir("memory")
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(work / "images.npz", x=rng.integers(0, 256, (20000, 3, 32, 32), dtype=np.uint8))
    rows = []
    for held in [p.strip() == "held" for p in args.paths.split(",")]:
        for n in counts:
            r = run(n, held, work, args.threads)
            rows.append([f"{n:,}", "whole tensor held (+ swd)" if held else "streamed (fid, kid)",
                         f"{r['rss']:.0f}", f"{int(r['floor_n']):,}", f"{r['fid']:.4f}", f"{r['sample_s']:.1f}",
                         f"{r['metric_s']:.1f}", f"{r['wall']:.0f}"])
    body = C.table(["samples", "path", "peak RSS MiB (case worker)", "floor samples", "fid (random-proj)",
                    "sample s", "metric s", "wall s"], rows)
    notes = ["npz data set of random 8-bit 3x32x32 images (10,000 train, 10,000 test), ddpm + untrained MLP, ddim 1 step, "
             "eval.batch_size 500; fid and kid in random-proj features (64-d), bootstrap off",
             "peak RSS is the case worker's (getrusage ru_maxrss): imports, data set, sampling and metrics"]
    C.emit("Peak memory of a full-size FID against the sample count", body, args, notes)


if __name__ == "__main__":
    main()
