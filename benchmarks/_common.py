"""Helpers shared by the benchmark scripts: arguments, interleaved timing, markdown output.

Timing rule: the machine may be shared, so absolute seconds are not trusted. Every script runs the
variants it compares side by side in one process, repeat after repeat with the order rotated. A
ratio A / B is the median over repeats of A's time over B's time in the same repeat (paired, so a
change of background load between repeats cancels); the seconds shown are median [min-max].
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

_TEMP: list[Path] = []
atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _TEMP])


def parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--repeats", type=int, default=repeats, help="interleaved repeats per variant (median)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: small ops, robust on a shared machine)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--output", type=Path, help="also write the markdown to this file")
    return p


def setup(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


def tempdir(prefix: str) -> Path:
    """A temporary directory, removed when the script exits."""
    _TEMP.append(Path(tempfile.mkdtemp(prefix=f"bench-perf-{prefix}-")))
    return _TEMP[-1]


def write_suite(directory: Path, text: str, name: str = "suite.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_case(suite_path: Path, index: int = 0):
    """A case of a suite, resolved by bench itself (defaults filled, as `bench run` would)."""
    from bench.plugins import get_manager
    from bench.suite import load_suite

    manager = get_manager(())
    return load_suite(suite_path, manager.registries, manager.versions()).cases[index]


def interleave(variants: dict[str, Callable[[], float | None]], repeats: int,
               warmup: bool = True) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, rotating the order every repeat. A variant returns None (it
    is timed here, wall clock of the call), its own measured seconds, or a dict of them (recorded as
    ``"variant:key"``)."""
    names = list(variants)
    times: dict[str, list[float]] = {}
    if warmup:
        for n in names:
            variants[n]()
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            got = variants[n]()
            if got is None:
                got = time.perf_counter() - start
            for key, secs in (got.items() if isinstance(got, dict) else [(None, got)]):
                times.setdefault(n if key is None else f"{n}:{key}", []).append(secs)
    return times


def wall(fn: Callable, *args) -> None:
    """Call ``fn(*args)`` and return None, so that :func:`interleave` times the call."""
    fn(*args)


def med(values: list[float]) -> float:
    return statistics.median(values)


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of times[a][i] / times[b][i] (the two measured in the same repeat)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def spread(values: list[float]) -> str:
    """median [min-max] in seconds, for the tables."""
    return f"{med(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fingerprint() -> str:
    """CPU model (/proc/cpuinfo), cores, torch version and threads, and the load at the end of the run."""
    import os

    import torch

    from bench.timing import machine_fingerprint

    fp = machine_fingerprint()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"machine: {fp['cpu']}, {fp['cores']} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), python {fp['python']}; load average {load}")


def emit(title: str, body: str, args, notes: list[str] = ()) -> None:
    command = "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    text = "\n".join([f"### {title}", "", f"`{command}`", "", fingerprint(), "", body, *(
        ["", *[f"- {n}" for n in notes]] if notes else []), ""])
    print(text)
    if args.output:
        args.output.write_text(text)


def registries():
    from bench.plugins import get_manager

    return get_manager(()).registries


def build(kind: str, spec: dict, dataset, seed: int = 0):
    """Build a component through bench's registries with a build context over ``dataset``, as the
    runner does (torch's global seed set from ``seed`` first, so the initial weights are fixed)."""
    import torch

    from bench.context import BuildContext
    from bench.rng import derive_seed
    from bench.store import Store

    regs = registries()
    torch.manual_seed(derive_seed(seed, "torch-global"))  # what CaseRunner.run does before building
    ctx = BuildContext.from_registries(regs, seed=seed, store=Store(tempdir("store")), dataset=dataset)
    return regs[kind].create(spec, context=ctx)


def quick_train(family, data, steps: int, batch: int = 256, lr: float = 2e-3, seed: int = 0):
    """A few plain Adam steps on ``family.loss`` (a briefly trained network for comparisons)."""
    import torch

    from bench.rng import BatchRNG

    opt = torch.optim.Adam([p for p in family.parameters() if p.requires_grad], lr=lr)
    gen, rng = torch.Generator().manual_seed(seed), BatchRNG(seed + 1, batch)
    family.train()
    for _ in range(steps):
        loss = family.loss(data[torch.randint(len(data), (batch,), generator=gen)], rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    family.eval()
    return family
