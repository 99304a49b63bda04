"""Train once, sample many: one suite with S samplers over one model vs S one-sampler runs.

The suite: ``ddpm`` (bench_nets ``mlp``) on toy2d/8gaussians, 300 training steps (batch 256),
1000 samples per case, no metrics, samplers ancestral 20, ddim 20, ddim 10, ancestral 10 (S = 4).

- together: ``bench run SUITE`` once;
- separate: S runs of ``bench run``, each on a suite with one of the samplers (same suite name, so the
  cases are the same) and each with a fresh store, so each trains its own copy of the model.

Every ``bench run`` is the real CLI in a subprocess (``-q --threads 1 --results DIR --store DIR
--tracking-uri sqlite:///DIR/mlflow.db``, a new temporary DIR each time, so each pays process start,
imports and a new MLflow database). Interleaved over ``--repeats``. Reported: wall seconds, separate /
together (median of per-repeat ratios), trainings counted from the records' ``trained`` field, and
the summed ``train_time_s`` of the trainings that happened (bench's own timer around the loop).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _common as C

SUITE = """
name: train_once
seed: 0
defaults:
  train: {{steps: {steps}, batch_size: 256, lr: 2.0e-3, ema: 0.99, warmup: 50, grad_clip: 1.0}}
  eval: {{num_samples: 1000, batch_size: 500, grid: 0}}
matrix:
  dataset: [toy2d/8gaussians]
  family: [ddpm]
  sampler: [{samplers}]
metrics: []
"""
SAMPLERS = ["{name: ancestral, steps: 20}", "{name: ddim, steps: 20}", "{name: ddim, steps: 10}",
            "{name: ancestral, steps: 10}"]
BENCH = Path(sys.executable).with_name("bench")


def bench_run(suite: Path, threads: int) -> list[dict]:
    d = C.tempdir("run")
    cmd = [str(BENCH), "run", str(suite), "-q", "--threads", str(threads), "--results", str(d / "results"),
           "--store", str(d / "store"), "--tracking-uri", f"sqlite:///{d}/mlflow.db"]
    done = subprocess.run(cmd, cwd=d, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise SystemExit(f"bench run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return [json.loads(p.read_text()) for p in (d / "results").rglob("record.json")]


def main() -> None:
    p = C.parser(__doc__, repeats=2)
    p.add_argument("--steps", type=int, default=300, help="training steps")
    args = p.parse_args()
    C.setup(args)
    if args.quick:
        args.repeats, args.steps = 1, 100
    tmp = C.tempdir("train-once")
    together = C.write_suite(tmp, SUITE.format(steps=args.steps, samplers=", ".join(SAMPLERS)), "together.yaml")
    alone = [C.write_suite(tmp, SUITE.format(steps=args.steps, samplers=s), f"alone{i}.yaml")
             for i, s in enumerate(SAMPLERS)]
    records: dict[str, list] = {"together": [], "separate": []}

    def run(name, suites):
        recs = [r for s in suites for r in bench_run(s, args.threads)]
        assert len(recs) == len(SAMPLERS) and all(r["status"] == "ok" for r in recs), recs
        records[name] = recs
        return None

    t = C.interleave({"together": lambda: run("together", [together]), "separate": lambda: run("separate", alone)},
                     args.repeats, warmup=False)
    rows = []
    for name in ("together", "separate"):
        recs = records[name]
        trained = [r for r in recs if r["trained"]]
        rows.append([name, 1 if name == "together" else len(SAMPLERS), len(recs), len(trained),
                     f"{sum(r['metrics']['train_time_s'] for r in trained):.2f}",
                     f"{sum(r['metrics']['sample_time_s'] for r in recs):.2f}", C.spread(t[name])])
    ratio = C.ratio(t, "separate", "together")
    body = C.table(["mode", "bench runs", "cases", "trainings", "train_time_s (sum)", "sample_time_s (sum)",
                    "wall s, median [min-max]"], rows) + f"\n\nwall time separate / together: **{ratio:.2f}**"
    notes = [f"S = {len(SAMPLERS)} samplers, {args.steps} training steps, {args.repeats} interleaved repeats; "
             "train/sample sums are from the last repeat's records",
             "wall time includes each process's start: imports (torch, MLflow), a new MLflow database, logging"]
    C.emit("Train once, sample many: one suite vs one run per sampler", body, args, notes)


if __name__ == "__main__":
    main()
