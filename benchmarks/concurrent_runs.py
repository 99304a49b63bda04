"""Two bench runs at once on one machine: wall time of two concurrent runs over one run alone.

Issue 14 (item 8): several bench processes on one machine used to each start as many torch threads
as there are cores, and a quickstart under that load ran 10x slower than alone. Now every case runs
on its own ``threads`` (default 1) and the default executor fits ``workers x threads <= cores``, so
two runs at once should take about twice as long as one (they share the cores), not ten times.

Each repeat runs ``bench run SUITE -q`` (the default executor and thread count, as a user types it)
once alone, then twice at once, every run in a fresh temporary directory of its own (``--results``,
``--store`` and ``--tracking-uri sqlite:///...``: nothing is shared, so both concurrent runs train
every model). Reported: the wall seconds of the run alone, of the pair (start of both to the end of
the later one), their ratio (goal <= 2.2), and the load average before each measurement (a shared
machine shows up there). ``--quick`` caps training and sampling for a smoke run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import _common as C

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train.steps=20", "--set", "eval.num_samples=64", "--set", "eval.batch_size=64",
         "--set", "eval.grid=0"]


def start(suite: Path, extra: list[str], tag: str) -> tuple[subprocess.Popen, Path]:
    work = C.tempdir(tag)
    cmd = [sys.executable, "-m", "bench.cli", "run", str(suite), "-q", "--results", str(work / "results"),
           "--store", str(work / "store"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", *extra]
    log = open(work / "log.txt", "w")
    return subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT), work


def finish(runs: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, work in runs:
        if proc.wait() != 0:
            sys.exit(f"bench run failed (exit {proc.returncode}); its output:\n{(work / 'log.txt').read_text()[-3000:]}")


def timed(suite: Path, extra: list[str], n: int, tag: str) -> float:
    t0 = time.perf_counter()
    runs = [start(suite, extra, f"{tag}{i}") for i in range(n)]
    finish(runs)
    return time.perf_counter() - t0


def main() -> None:
    p = C.parser(__doc__, repeats=1)
    p.add_argument("--suite", type=Path, default=ROOT / "suites" / "quickstart.yaml")
    args = p.parse_args()
    extra = QUICK if args.quick else []
    rows = []
    for r in range(args.repeats):
        load_alone = os.getloadavg()[0]
        alone = timed(args.suite, extra, 1, f"alone{r}-")
        load_pair = os.getloadavg()[0]
        pair = timed(args.suite, extra, 2, f"pair{r}-")
        rows.append((alone, pair, pair / alone, load_alone, load_pair))
        print(f"repeat {r + 1}: alone {alone:.0f} s, two at once {pair:.0f} s, ratio {pair / alone:.2f} "
              f"(load average {load_alone:.1f} / {load_pair:.1f})", flush=True)
    ratios = [row[2] for row in rows]
    lines = [f"`{args.suite.name}`{' --quick' if args.quick else ''}, {os.cpu_count()} cores, "
             f"{len(rows)} repeat(s)", "",
             "| run | wall time (s) | load average before |", "|---|---|---|"]
    for alone, pair, ratio, la, lp in rows:
        lines += [f"| one alone | {alone:.0f} | {la:.1f} |", f"| two at once (both done) | {pair:.0f} | {lp:.1f} |"]
    lines += ["", f"ratio two / one: median {sorted(ratios)[len(ratios) // 2]:.2f} "
                  f"[{min(ratios):.2f}-{max(ratios):.2f}] (goal <= 2.2)"]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
