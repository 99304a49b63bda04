"""Cost of running cases in a watched worker process (the local executor) instead of in the driver.

The cases are the quickstart's (suites/quickstart.yaml, resolved by bench) made small with
``train.steps=20``, ``eval.num_samples=64``, ``eval.grid=0`` and only the ``swd`` metric, so that the
fixed costs of isolation are not drowned by the work. Every model is trained once before timing
(the store is warm, as on a resumed or repeated run). Each timed pass is a fresh Python process
that imports bench, loads the suite (as ``bench run`` does) and then runs every case, timed from
the first case to the last record, interleaved over ``--repeats``:

- ``in-process``: every case through ``run_case`` in that process, as the old local executor did;
- ``worker``: the same cases through ``executors.worker.run_jobs`` with one worker (what ``bench
  run`` does now): a spawned interpreter that imports torch and the plugins once, then per case the
  job and its record through a pipe and the driver's watch loop.

Both passes start cold (first imports of the plugins' modules, matplotlib, ...), as a real run does.
Reported: seconds per pass, the paired ratio worker / in-process, the difference per run, and that
difference as a share of a quickstart run of ``--quickstart-seconds`` wall time (default 207 s,
docs/scaling.md's idle-machine figure at --threads 1): the isolation costs a fixed amount per run
plus a small amount per case, both in the difference.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=20", "eval.num_samples=64", "eval.grid=0", "metrics=[swd]"]


def one_pass(variant: str, store: str, threads: int) -> float:
    """Run every small quickstart case once in this (fresh) process; the seconds it took."""
    import time

    import torch

    from bench.executors.worker import run_jobs
    from bench.plugins import get_manager
    from bench.runner import CaseJob, RunSettings, run_case
    from bench.suite import load_suite

    torch.set_num_threads(threads)
    manager = get_manager(())
    suite = load_suite(ROOT / "suites" / "quickstart.yaml", manager.registries, manager.versions(), SMALL)
    settings = RunSettings(store=store, results_dir=str(Path(store).parent / f"results-{variant}"), quiet=True,
                           threads=threads)
    jobs = [CaseJob(c.to_dict(), settings, i, len(suite.cases)) for i, c in enumerate(suite.cases)]
    start = time.perf_counter()
    if variant == "in-process":
        out = [run_case(job) for job in jobs]
    else:
        out = []
        run_jobs(jobs, out.append, workers=1, threads=threads)
    seconds = time.perf_counter() - start
    assert [r["status"] for r in out] == ["ok"] * len(jobs), [r.get("error") for r in out]
    return seconds


def main() -> None:
    import json
    import subprocess

    p = C.parser(__doc__, repeats=3)
    p.add_argument("--quickstart-seconds", type=float, default=207.0,
                   help="wall time of `bench run suites/quickstart.yaml --threads 1` to project onto")
    p.add_argument("--pass", dest="one", nargs=2, metavar=("VARIANT", "STORE"), help=argparse_hidden())
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_pass(args.one[0], args.one[1], args.threads)))
        return
    C.setup(args)
    store = str(C.tempdir("isolation") / "store")

    def run(variant: str) -> float:
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--pass", variant, store]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    run("in-process")  # trains every model once: the timed passes load checkpoints
    times = C.interleave({"in-process": lambda: run("in-process"), "worker": lambda: run("worker")},
                         args.repeats, warmup=False)
    diffs = [w - i for w, i in zip(times["worker"], times["in-process"])]
    share = C.med(diffs) / args.quickstart_seconds
    rows = [["in-process", C.spread(times["in-process"]), ""],
            ["worker", C.spread(times["worker"]), f"{C.ratio(times, 'worker', 'in-process'):.3f}"]]
    body = C.table(["10 small quickstart cases, one cold process per pass", "seconds, median [min-max]",
                    "paired ratio to in-process"], rows)
    notes = [f"difference per run (worker - in-process, paired): median {C.med(diffs):.2f} s "
             f"[{min(diffs):.2f} to {max(diffs):.2f}] over {args.repeats} repeats",
             f"as a share of a {args.quickstart_seconds:g} s quickstart run: {100 * share:.1f}% (target <= 5%)"]
    C.emit("Case isolation (one watched worker) vs in-process", body, args, notes)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
