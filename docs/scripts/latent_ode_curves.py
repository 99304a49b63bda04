"""Learning curves of a latent ODE case (docs/results.md section 5): train one case of a suite through
bench's own trainer and evaluate it with bench's own ``video`` metric every ``--every`` steps.

    python docs/scripts/latent_ode_curves.py suites/results-latent-ode.yaml --every 100 --videos 50 \\
        --out docs/img/latent_ode_curves   # writes .json, .csv, .png and _frames.png

The case (``--case``: its id, default the suite's first case; ``--set`` overrides as for ``bench run``)
is built from the registries exactly as ``bench run`` builds it: the dataset and family from their
specs, torch's global seed from the case seed, then :func:`bench.trainer.train` with the case's train
section (warm-up, clipping, EMA, batches). The evaluation hooks into the trainer's public
``save(state, finished)`` callback, called every ``train.checkpoint_every`` steps (set to ``--every``)
and after the last step, with the resumable state (:mod:`bench.train_state`): the family's weights
(``raw``) and the EMA weights (``ema``). Each is evaluated on a copy of the family with the
``video`` metric (bench_metrics/video.py) on the fixed subset of ``--videos`` test videos that metric
draws, in batches of the case's ``video`` metric's ``batch_size`` (``--batch-size``: another, which
changes the scores in the last float digits only); evaluation reads no random state of the
training, so the weights at the last step are those of a ``bench run`` of the same case with the
same threads. ``train_s`` is the training time
without the evaluations. The blank (black) frame's extrapolation SSIM and MSE on the same videos,
through the same per-frame functions, is drawn as the reference line. ``_frames.png``: test videos
1-3, true frames and the last evaluated model's (EMA weights when the case keeps them).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

KEYS = ("recon_ssim", "recon_mse", "extrap_ssim", "extrap_mse", "extrap_psnr")


def load_case(suite: Path, case_id: str | None, overrides: list[str]):
    from bench.errors import SuiteError
    from bench.plugins import get_manager
    from bench.suite import load_suite

    regs = get_manager(()).registries
    try:
        cases = load_suite(suite, regs, overrides=overrides).cases
    except SuiteError as exc:  # one line, exit 2, as `bench run`
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    if case_id is None:
        return regs, cases[0]
    chosen = [c for c in cases if c.id == case_id]
    if not chosen:
        print(f"no case {case_id!r} in {suite}; cases: {', '.join(c.id for c in cases)}", file=sys.stderr)
        raise SystemExit(2)
    return regs, chosen[0]


def evaluate(family, dataset, seed: int, videos: int, batch_size: int, workdir: Path) -> dict[str, float]:
    """The ``video`` metric (10 context frames, the rest extrapolated) of ``family`` on ``videos``
    test videos. ``family`` must be a fresh object: the metric keeps its predictions per family."""
    from bench.context import MetricContext
    from bench_metrics.video import VideoMetrics

    ctx = MetricContext(None, dataset, family, None, {}, seed, None, workdir, None, None)
    out = VideoMetrics(num_videos=videos, batch_size=batch_size).compute(ctx)
    return {k: out[k] for k in KEYS}


def blank_frame(dataset, videos: int) -> dict[str, float]:
    """Extrapolation SSIM and MSE of a black frame for frames 11-20 on the metric's video subset."""
    from bench_metrics.common import fixed_subset
    from bench_metrics.video import mse_per_frame, ssim_per_frame, to_unit

    test = dataset.split("test")
    rows = fixed_subset(torch.arange(len(test)), videos, "video", "test")
    truth = to_unit(test[rows][:, 10:])
    blank = torch.zeros_like(truth)
    return {"extrap_ssim": float(ssim_per_frame(blank, truth).mean()),
            "extrap_mse": float(mse_per_frame(blank, truth).mean())}


def run(suite: Path, case_id: str | None, overrides: list[str], every: int, videos: int,
        threads: int | None, batch_size: int | None = None) -> dict[str, Any]:
    from bench import trainer
    from bench.context import BuildContext
    from bench.rng import derive_seed
    from bench.store import Store

    regs, case = load_case(suite, case_id, overrides)
    threads = threads or case.threads
    video = next((m for m in case.metrics if m.get("name") == "video"), {})
    batch_size = batch_size or video.get("batch_size", 16)  # the case's (16: the metric's default)
    torch.set_num_threads(threads)  # as the runner: the case's threads (they change float reductions)
    tmp = Path(tempfile.mkdtemp(prefix="latent-ode-curves-"))
    store = Store(tmp / "store")
    ctx = BuildContext.from_registries(regs, seed=case.seed, store=store)
    dataset = regs.dataset.create(case.dataset, context=ctx)
    torch.manual_seed(derive_seed(case.seed, "torch-global"))  # as bench.runner.CaseRunner.run
    ctx = BuildContext.from_registries(regs, seed=case.seed, store=store, dataset=dataset)
    family = regs.family.create(case.family, context=ctx)
    rows: list[dict[str, Any]] = []
    spent = {"eval_s": 0.0}
    final: dict[str, Any] = {}
    t_start = time.perf_counter()

    def save(state: dict[str, Any], finished: bool) -> None:
        t0 = time.perf_counter()
        train_s = round(t0 - t_start - spent["eval_s"], 1)
        weights = {"raw": None, "ema": state["ema"]}
        for which, ema in weights.items():
            if which == "ema" and ema is None:
                continue
            model = copy.deepcopy(family)
            if ema is not None:  # the trainer's EMA list follows the trainable parameters' order
                with torch.no_grad():
                    for p, e in zip([p for p in model.parameters() if p.requires_grad], ema):
                        p.copy_(e)
            model.eval()
            final["model"] = model
            scores = evaluate(model, dataset, case.sample_seed, videos, batch_size, tmp)
            loss = state["curve"][-1][1] if state["curve"] else float("nan")
            rows.append({"step": state["step"], "weights": which,
                         "train_s": train_s,
                         "loss": loss, **scores})
            print(json.dumps(rows[-1]), flush=True)
        spent["eval_s"] += time.perf_counter() - t0

    cfg = {**case.train, "checkpoint_every": every}
    load_before = os.getloadavg()
    out = trainer.train(family, dataset, cfg, case.seed, lambda it, **kw: it, lambda where: None,
                        save=save)
    return {"suite": str(suite), "case": case.id, "family": case.family, "train": case.train,
            "seed": case.seed, "threads": threads, "videos": videos, "eval_batch_size": batch_size, "every": every,
            "train_time_s_with_evals": out["train_time_s"], "eval_s": spent["eval_s"],
            "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
            "blank_frame": blank_frame(dataset, videos), "rows": rows,
            "frames": frames(final["model"], dataset, 3)}


def frames(model, dataset, n: int) -> dict[str, list]:
    """Test videos 1..n: the true frames and the model's (frames 1-10 reconstructed, 11-20 predicted);
    not written to the JSON."""
    test = dataset.split("test")[:n]
    with torch.no_grad():
        recon, pred = model.reconstruct_and_predict(test[:, :10], range(10), range(10, test.shape[1]))
    return {"truth": test, "model": torch.cat([recon, pred], 1)}


def plot_frames(result: dict[str, Any], path: Path) -> None:
    """Rows: truth and model for each video; columns: frames 1-20 (the dashed line: the context ends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, model = result["frames"]["truth"], result["frames"]["model"]
    n, t = truth.shape[:2]
    fig, axes = plt.subplots(2 * n, t, figsize=(t * 0.6, 2 * n * 0.65))
    for v in range(n):
        for r, (name, clip) in enumerate((("truth", truth[v]), ("model", model[v]))):
            for j in range(t):
                ax = axes[2 * v + r, j]
                ax.imshow(((clip[j, 0] + 1) / 2).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 10:
                    for side in ("left",):
                        ax.spines[side].set_color("red")
                        ax.spines[side].set_linewidth(2)
                if j == 0:
                    ax.set_ylabel(f"{v + 1} {name}", fontsize=6)
                if v == 0 and r == 0:
                    ax.set_title(str(j + 1), fontsize=6)
    last = max(r["step"] for r in result["rows"])
    fig.suptitle(f"{result['case']}, seed {result['seed']}, step {last}: test videos 1-{n}, frames 1-10 "
                 "reconstructed, 11-20 predicted (red edge)", fontsize=7)
    fig.savefig(path, dpi=110)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("extrap_ssim", "recon_ssim", "extrap_mse"),
                              ("extrapolation SSIM (frames 11-20)", "reconstruction SSIM (frames 1-10)",
                               "extrapolation MSE")):
        for which, style in (("ema", "-o"), ("raw", "--s")):
            pts = [(r["step"], r[key]) for r in result["rows"] if r["weights"] == which]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=f"{which} weights")
        if key in result["blank_frame"]:
            ax.axhline(result["blank_frame"][key], color="grey", ls=":", label="blank frame")
        if key == "extrap_ssim":
            ax.axhline(0.5, color="red", lw=0.8, ls="-.", label="goal 0.5")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['case']}, seed {result['seed']}, {result['videos']} test videos", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--case", default=None, help="case id (default: the suite's first case)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="suite override, as `bench run --set`")
    p.add_argument("--every", type=int, default=100, help="evaluate every N training steps")
    p.add_argument("--videos", type=int, default=50, help="test videos per evaluation")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the case's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="videos per model call in the evaluation (default: the case's video metric's)")
    p.add_argument("--out", type=Path, required=True, help="output path without suffix: .json, .csv, .png")
    args = p.parse_args(argv)
    result = run(args.suite, args.case, args.overrides, args.every, args.videos, args.threads, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({k: v for k, v in result.items() if k != "frames"},
                                                        indent=1, default=str))
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        w.writeheader()
        w.writerows(result["rows"])
    plot(result, args.out.with_suffix(".png"))
    plot_frames(result, args.out.with_name(args.out.name + "_frames.png"))


if __name__ == "__main__":
    main()
