"""Cost of running cases in a watched worker process (the local executor) instead of in the driver.

The cases are the quickstart's (suites/quickstart.yaml, resolved by bench) made small with
``train.steps=20``, ``eval.num_samples=64``, ``eval.grid=0`` and only the ``swd`` metric, so that the
fixed costs of isolation are not drowned by the work. Every model is trained once before timing
(the store is warm, as on a resumed or repeated run); then, interleaved over ``--repeats``:

- ``in-process``: every case through ``run_case`` in this process, as the old local executor did
  (the per-process dataset cache emptied first, as in a fresh ``bench run``);
- ``worker``: the same cases through ``executors.worker.run_jobs`` with one worker: a spawned
  interpreter (torch and the plugins imported once), then per case the job and its record through a
  pipe and the driver's watch loop;
- ``spawn only``: starting one worker and closing it (the fixed part of ``worker``).

Reported: the per-run fixed cost (spawn only), the per-case cost ((worker - in-process - spawn) / n)
and the projected share of a quickstart run of ``--quickstart-seconds`` wall time (default 150 s, the
README's figure at --threads 1): (fixed + n x per-case) / quickstart seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=20", "eval.num_samples=64", "eval.grid=0", "metrics=[swd]"]


def main() -> None:
    p = C.parser(__doc__, repeats=3)
    p.add_argument("--quickstart-seconds", type=float, default=150.0,
                   help="wall time of `bench run suites/quickstart.yaml --threads 1` to project onto")
    args = p.parse_args()
    C.setup(args)
    from bench import runner
    from bench.executors.worker import CaseWorker, run_jobs
    from bench.plugins import get_manager
    from bench.runner import CaseJob, RunSettings, run_case
    from bench.suite import load_suite

    manager = get_manager(())
    suite = load_suite(ROOT / "suites" / "quickstart.yaml", manager.registries, manager.versions(), SMALL)
    cases = suite.cases[:3] if args.quick else suite.cases
    work = C.tempdir("isolation")
    settings = RunSettings(store=str(work / "store"), results_dir=str(work / "results"), quiet=True,
                           threads=args.threads)
    jobs = [CaseJob(c.to_dict(), settings, i, len(cases)) for i, c in enumerate(cases)]

    def in_process() -> None:
        runner._DATASETS.clear()
        for job in jobs:
            assert run_case(job)["status"] == "ok"

    def in_worker() -> None:
        out: list[dict] = []
        run_jobs(jobs, out.append, workers=1, threads=args.threads)
        assert [r["status"] for r in out] == ["ok"] * len(jobs), [r.get("error") for r in out]

    def spawn_only() -> None:
        CaseWorker(args.threads).close()

    in_process()  # trains every model once: the timed passes load checkpoints
    times = C.interleave({"in-process": in_process, "worker": in_worker, "spawn only": spawn_only},
                         args.repeats, warmup=False)
    n = len(jobs)
    diffs = [w - i for w, i in zip(times["worker"], times["in-process"])]
    per_case = [(d - s) / n for d, s in zip(diffs, times["spawn only"])]
    fixed = C.med(times["spawn only"])
    projected = (fixed + n * max(C.med(per_case), 0.0)) / args.quickstart_seconds
    rows = [["in-process", C.spread(times["in-process"]), ""],
            ["worker", C.spread(times["worker"]), f"{C.ratio(times, 'worker', 'in-process'):.3f}"],
            ["spawn only", C.spread(times["spawn only"]), ""]]
    body = C.table([f"{n} small quickstart cases", "seconds, median [min-max]", "ratio to in-process"], rows)
    notes = [f"fixed cost per run (spawn only): {fixed:.2f} s; per case: {C.med(per_case) * 1000:.0f} ms "
             f"[{min(per_case) * 1000:.0f} to {max(per_case) * 1000:.0f}] over {args.repeats} repeats",
             f"projected on a {args.quickstart_seconds:g} s quickstart run of {n} cases: "
             f"{100 * projected:.1f}% (target <= 5%)"]
    C.emit("Case isolation (one watched worker) vs in-process", body, args, notes)


if __name__ == "__main__":
    main()
