"""Cost of running cases in a watched worker process (the local executor) instead of in the driver.

Two end-to-end ``bench run`` commands on the quickstart (suites/quickstart.yaml) made small with
``--set train.steps=20 eval.num_samples=64 eval.grid=0 metrics=[swd]`` so that the fixed costs of
isolation are not drowned by the work, ``--threads 1 -q --no-resume``, each a fresh process with
its own MLflow database, the store warm (every model trained once before timing, as on a repeated
run), interleaved over ``--repeats``:

- ``worker``: ``--executor local``, what ``bench run`` does now (one spawned case worker that the
  driver watches; it starts while the driver opens MLflow);
- ``in-process``: ``--executor inprocess``, an executor defined in this file (loaded with
  ``--plugins isolation``) that calls ``run_case`` in the driver, as the local executor did before.

Reported: wall seconds per run, the paired ratio worker / in-process, and the paired difference as
a share of a quickstart run of ``--quickstart-seconds`` (default 207 s, docs/scaling.md's
idle-machine figure at --threads 1): the isolation costs a fixed amount per run (a second
interpreter importing torch and the plugins) plus a pipe round trip per case, both in the difference.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=20", "eval.num_samples=64", "eval.grid=0", "metrics=[swd]"]


class InProcessExecutor:
    """The pre-isolation local executor: every case in the driver process."""

    def __init__(self, workers=None, **_):
        self.workers = 1

    def run(self, jobs, on_result):
        from bench.runner import run_case

        for job in jobs:
            on_result(run_case(job))


try:
    from bench.hookspecs import hookimpl

    @hookimpl
    def bench_register_executors(register):
        register("inprocess", "isolation:InProcessExecutor", description="benchmarks/isolation.py only")
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    import os
    import subprocess
    import time

    p = C.parser(__doc__, repeats=3)
    p.add_argument("--quickstart-seconds", type=float, default=207.0,
                   help="wall time of `bench run suites/quickstart.yaml --threads 1` to project onto")
    p.add_argument("--direct-only", action="store_true", help="only the direct per-run and per-case costs")
    args = p.parse_args()
    direct = direct_costs(args.repeats)
    if args.direct_only:
        C.emit("Case isolation: direct costs", direct, args)
        return
    work = C.tempdir("isolation")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent),
                                                         os.environ.get("PYTHONPATH", "")]))
    sets = [x for kv in SMALL for x in ("--set", kv)]
    count = [0]

    def run(executor: str) -> float:
        count[0] += 1
        cmd = [sys.executable, "-m", "bench.cli", "run", str(ROOT / "suites" / "quickstart.yaml"), *sets, "-q",
               "--no-resume", "--threads", str(args.threads), "--store", str(work / "store"),
               "--results", str(work / f"results{count[0]}"), "--tracking-uri", f"sqlite:///{work}/mlflow{count[0]}.db",
               "--executor", executor, "--plugins", "isolation"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{executor}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return seconds

    run("inprocess")  # trains every model once: the timed runs load checkpoints
    times = C.interleave({"in-process": lambda: run("inprocess"), "worker": lambda: run("local")},
                         args.repeats, warmup=False)
    diffs = [w - i for w, i in zip(times["worker"], times["in-process"])]
    share = C.med(diffs) / args.quickstart_seconds
    rows = [["in-process", C.spread(times["in-process"]), ""],
            ["worker", C.spread(times["worker"]), f"{C.ratio(times, 'worker', 'in-process'):.3f}"]]
    body = C.table(["`bench run`, 10 small quickstart cases", "wall seconds, median [min-max]",
                    "paired ratio to in-process"], rows)
    notes = [f"difference per run (worker - in-process, paired): median {C.med(diffs):.2f} s "
             f"[{min(diffs):.2f} to {max(diffs):.2f}] over {args.repeats} repeats",
             f"as a share of a {args.quickstart_seconds:g} s quickstart run: {100 * share:.1f}% (target <= 5%)"]
    C.emit("Case isolation (one watched worker) vs in-process", direct + "\n\n" + body, args, notes)


def direct_costs(repeats: int) -> str:
    """The isolation's own costs, measured directly: starting a worker until it has imported torch
    and bench and exits (per run; ``bench run`` overlaps it with opening MLflow), and one case's
    messages (the job, "started", the record of a quickstart case) through the worker's pipe."""
    import multiprocessing as mp
    import time

    from bench.executors.worker import CaseWorker
    from bench.plugins import get_manager
    from bench.runner import CaseJob, RunSettings
    from bench.suite import load_suite

    spawn = []
    for _ in range(repeats):
        start = time.perf_counter()
        w = CaseWorker(1)
        w.conn.send(None)  # exits once torch and bench are imported and it reads the pipe
        w.proc.join()
        spawn.append(time.perf_counter() - start)
    manager = get_manager(())
    case = load_suite(ROOT / "suites" / "quickstart.yaml", manager.registries, manager.versions(), SMALL).cases[0]
    job = CaseJob(case.to_dict(), RunSettings(store="s", results_dir="r"))
    record = {"case_id": case.id, "config": case.config(), "metrics": {f"m{i}": float(i) for i in range(40)},
              "series": {"train_loss": [(i, 0.5) for i in range(200)]}, "notes": ["x" * 80] * 5}
    a, b = mp.Pipe()
    trips = []
    for _ in range(200):
        start = time.perf_counter()
        a.send(job), b.recv(), b.send(("started", None)), a.recv(), b.send(("record", record)), a.recv()
        trips.append(time.perf_counter() - start)
    return C.table(["direct cost", "median [min-max]"],
                   [["worker start to exit (spawn, imports), per run", C.spread(spawn) + " s"],
                    ["job + started + record through the pipe, per case",
                     f"{C.med(trips) * 1e3:.3f} [{min(trips) * 1e3:.3f}-{max(trips) * 1e3:.3f}] ms"]])


if __name__ == "__main__":
    main()
