"""`bench validate` start-up: wall time of a cold `bench validate suites/quickstart.yaml` against a bare
Python start and a cold `import torch`, side by side.

Each variant is a fresh process (what a user waits for). `bench validate` reads component signatures
from source (bench/signatures.py) and should cost about a Python start plus bench's own imports, well
under `import torch`; the issue's target is under 1.5 s on this machine. The ratio validate / import
torch is the load-independent number; the seconds are median [min-max] over the repeats.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _common import emit, interleave, med, parser, ratio, spread, table

ROOT = Path(__file__).resolve().parents[1]
BENCH = str(Path(sys.executable).with_name("bench"))


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")


def main() -> None:
    args = parser(__doc__, repeats=10).parse_args()
    suite = "suites/quickstart.yaml"
    variants = {
        "bench validate": lambda: run([BENCH, "validate", suite]),
        "python -c pass": lambda: run([sys.executable, "-c", "pass"]),
        "python -c 'import torch'": lambda: run([sys.executable, "-c", "import torch"]),
    }
    times = interleave(variants, 3 if args.quick else args.repeats)
    rows = [[name, spread(t), ratio(times, name, "python -c 'import torch'")] for name, t in times.items()]
    body = table(["cold process", "seconds, median [min-max]", "/ import torch (paired)"], rows)
    notes = [f"`bench validate {suite}` median {med(times['bench validate']):.2f} s (target < 1.5 s)"]
    emit("bench validate against a Python start and import torch", body, args, notes)


if __name__ == "__main__":
    main()
