"""Harness overhead: bench's training and sampling of one DDPM case vs hand-written PyTorch loops.

The case (one suite, built and resolved by bench): ``ddpm`` (T = 1000, linear schedule, bench_nets
``mlp``) on toy2d/8gaussians, 150 steps of Adam lr 2e-3, batch 256, then ancestral sampling with 20
steps of 2000 samples in batches of 500 (``--dataset digits8``: the unet, 25 steps of batch 128, 128
samples). It is trained twice: with the training options of a typical suite (EMA 0.99, warmup 50,
grad clip 1) and with all three off (plain Adam).

Measured, interleaved in one process, over ``--repeats`` (ratios: median of per-repeat ratios):

- train, ``bench``: ``CaseRunner(case).run()`` with an empty store; ``train_time_s`` is what bench
  itself times around its loop (Adam, the options the case sets, loss check, curve, deadline);
- train, ``plain``: the same family (same initial weights, same batch indices) trained by
  ``family.loss`` with torch.randn noise and plain Adam, nothing else: the same training as bench
  with the options off;
- train, ``matched``: ``plain`` plus the same warmup, grad clip and EMA: the same training as bench
  with the options on;
- sample, ``bench``: ``CaseRunner.sample`` (what a run times as ``sample_time_s``: per-sample RNG
  streams, NFE and deadline hooks) on the trained EMA weights;
- sample, ``sampler, per-sample RNG``: bench_diffusion's ``Ancestral.sample`` with the same
  ``PerSampleRNG`` streams, no hooks;
- sample, ``sampler, batch RNG``: the same sampler with one generator per batch;
- sample, ``hand-written``: an ancestral loop with precomputed coefficients calling the same
  network (checked against ``sampler, batch RNG``: same noise, max |difference| reported).

Overhead ratio = bench / the loop doing the same training (plain with the options off, matched with
them on) and bench / hand-written (sample); target <= 1.05. The ratio
of the fastest repeats is shown beside it (on a loaded machine the least disturbed repeats).
``--profile`` prints bench's cProfile top functions to stderr.
"""
from __future__ import annotations

import cProfile
import math
import pstats
import sys
import time

import torch

import _common as C

SUITE = """
name: overhead
seed: 0
defaults:
  train: {{steps: {steps}, batch_size: {batch}, lr: 2.0e-3, {options}}}
  eval: {{num_samples: {n}, batch_size: 500, grid: 0}}
matrix:
  dataset: [{dataset}]
  family: [ddpm]
  sampler: [{{name: ancestral, steps: {k}}}]
metrics: []
"""


class TorchRNG:
    """The rng ``family.loss`` expects, drawing from torch's global generator for the whole batch."""

    def __init__(self, batch_size):
        self.batch_size = batch_size

    def randn(self, *shape, dtype=torch.float32):
        return torch.randn((self.batch_size, *shape), dtype=dtype)

    def randint(self, high, *shape):
        return torch.randint(high, (self.batch_size, *shape))


def build_family(case, dataset):
    return C.build("family", case.family, dataset, case.seed)


def hand_train(case, dataset, matched: bool) -> float:
    from bench.rng import derive_seed

    cfg = case.train
    family = build_family(case, dataset)
    data = dataset.split("train")
    params = [p for p in family.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    ema = [p.detach().clone() for p in params] if matched else None
    gen = torch.Generator().manual_seed(derive_seed(case.seed, "train-batches"))
    rng = TorchRNG(cfg["batch_size"])
    family.train()
    start = time.perf_counter()
    for step in range(cfg["steps"]):
        x = data[torch.randint(len(data), (cfg["batch_size"],), generator=gen)]
        if matched:
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"])
        loss = family.loss(x, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if matched:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        if matched:
            decay = min(cfg["ema"], (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
    return time.perf_counter() - start


def coefficients(family, steps):
    """(network input, sqrt(ab), sqrt(1 - ab), c_xt, c_x0, noise std) per step, from the betas."""
    import numpy as np

    from bench_diffusion.schedules import respace

    proc = family.process
    ab = np.cumprod(1.0 - np.asarray(proc.table["betas"], np.float64))
    levels = respace(proc.T, steps, "leading")
    out = []
    for i, level in enumerate(levels):
        a_t = ab[level - 1]
        a_s = ab[levels[i + 1] - 1] if i + 1 < len(levels) else 1.0
        var_ts = 1 - a_t / a_s
        out.append((1000.0 * level / proc.T, math.sqrt(a_t), math.sqrt(1 - a_t),
                    math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t), math.sqrt(a_s) * var_ts / (1 - a_t),
                    math.sqrt(var_ts * (1 - a_s) / (1 - a_t))))
    return out


def hand_sample(net, shape, coeffs, n, bs, seed, value_range=None, streams: bool = False):
    """The ancestral loop written out. Noise: ``torch.randn`` from one generator per batch, or with
    ``streams`` the per-sample Philox streams bench uses (the same noise as a run, so the same samples)."""
    from bench.rng import sample_batches

    outs = []
    with torch.no_grad():
        streams_of = sample_batches(seed, 0, n, bs) if streams else (None for _ in range(0, n, bs))
        for lo, rng in zip(range(0, n, bs), streams_of):
            b = min(bs, n - lo)
            if rng is not None:
                draw = lambda: rng.randn(*shape)  # noqa: E731
            else:
                g = torch.Generator().manual_seed(seed + lo)
                draw = lambda: torch.randn((b, *shape), generator=g)  # noqa: E731
            x = draw()
            for t_in, sa, s1a, c_xt, c_x0, std in coeffs:
                eps = net(x, torch.full((b,), t_in))
                x0 = (x - s1a * eps) / sa
                if value_range is not None:
                    x0 = x0.clamp(*value_range)
                x = c_xt * x + c_x0 * x0
                if std > 0:
                    x = x + std * draw()
            outs.append(x)
    return torch.cat(outs)


def sampler_sample(family, sampler, case, rng_kind: str):
    from bench.rng import BatchRNG, sample_batches

    n, bs = case.eval["num_samples"], case.eval["batch_size"]
    rngs = (BatchRNG(case.seed + lo, min(bs, n - lo)) for lo in range(0, n, bs)) if rng_kind == "batch" \
        else sample_batches(case.seed, 0, n, bs)
    with torch.no_grad():
        return torch.cat([sampler.sample(family, rng) for rng in rngs])


def main() -> None:
    p = C.parser(__doc__, repeats=12)
    p.add_argument("--dataset", default="toy2d/8gaussians", choices=["toy2d/8gaussians", "digits8"])
    p.add_argument("--steps", type=int, help="training steps (default 150; digits8 25)")
    p.add_argument("--samples", type=int, help="samples (default 2000; digits8 128)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--profile", action="store_true", help="cProfile one bench case, top 20 to stderr")
    args = p.parse_args()
    C.setup(args)
    from bench.runner import CaseJob, CaseRunner, RunSettings
    from bench.store import Store

    image = args.dataset == "digits8"
    steps = args.steps or (25 if image else 150)
    args.samples = args.samples or (128 if image else 2000)
    if args.quick:
        steps, args.samples, args.repeats = min(steps, 60), min(args.samples, 500), 3
    tmp = C.tempdir("overhead")
    options = {"on": "ema: 0.99, warmup: 50, grad_clip: 1.0", "off": "ema: 0.0, warmup: 0, grad_clip: null"}
    cases = {k: C.load_case(C.write_suite(tmp, SUITE.format(steps=steps, batch=128 if image else 256, n=args.samples,
                                                            dataset=args.dataset, k=args.sample_steps, options=v),
                                          name=f"suite-{k}.yaml"))
             for k, v in options.items()}
    case = cases["on"]
    regs = C.registries()
    runs = {"n": 0, "store": None}

    def bench_run(which: str = "on"):
        runs["n"] += 1
        runs["store"] = str(tmp / f"store{runs['n']}")
        c = cases[which]
        job = CaseJob(c.to_dict(), RunSettings(store=runs["store"], results_dir=str(tmp / "results"), quiet=True))
        rec = CaseRunner(c, job).run()
        assert rec["status"] == "ok", rec.get("error")
        return rec["metrics"]["train_time_s"]

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(bench_run)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(20)

    bench_run()  # warm-up, and the trained weights every sampling variant uses
    dataset = regs.dataset.create(case.dataset)
    family = build_family(case, dataset)
    entry = Store(runs["store"]).get("checkpoints", case.train_key)
    state = torch.load(entry / "checkpoint.pt", weights_only=True)
    family.load_state_dict(state["ema_state"])
    family.eval()
    sampler = regs.sampler.create(case.sampler)
    coeffs = coefficients(family, args.sample_steps)
    n, bs, vr = case.eval["num_samples"], case.eval["batch_size"], family.value_range

    times = C.interleave({
        "bench on": bench_run,
        "bench off": lambda: bench_run("off"),
        "train plain": lambda: hand_train(cases["off"], dataset, matched=False),
        "train matched": lambda: hand_train(case, dataset, matched=True),
    }, args.repeats, warmup=False)
    runner = CaseRunner(case, CaseJob(case.to_dict(), RunSettings(store=str(tmp / "s"), results_dir=str(tmp / "r"),
                                                                  quiet=True)))
    times.update(C.interleave({
        "bench sample": lambda: runner.sample(family, sampler, n).seconds,
        "sample per-sample": lambda: C.wall(sampler_sample, family, sampler, case, "per-sample"),
        "sample batch": lambda: C.wall(sampler_sample, family, sampler, case, "batch"),
        "sample hand": lambda: C.wall(hand_sample, family.net, family.shape, coeffs, n, bs, case.seed, vr),
        "sample hand streams": lambda: C.wall(hand_sample, family.net, family.shape, coeffs, n, bs, case.seed, vr,
                                              True),
    }, args.repeats))
    ours = sampler_sample(family, sampler, case, "batch")
    hand = hand_sample(family.net, family.shape, coeffs, n, bs, case.seed, vr)
    diff = float((ours - hand).abs().max())
    run_samples = runner.sample(family, sampler, n).samples
    diff_streams = float((run_samples - hand_sample(family.net, family.shape, coeffs, n, bs, case.seed, vr,
                                                    True)).abs().max())

    def row(phase, ref, label, key, bold=False):
        ratio, best = C.ratio(times, ref, key), min(times[ref]) / min(times[key])
        return [phase, label, C.spread(times[key]), f"**{ratio:.3f}**" if bold else f"{ratio:.3f}", f"{best:.3f}"]

    on, off = "train, EMA + warmup + clip", "train, options off"
    rows = [row(on, "bench on", "bench (CaseRunner, `train_time_s`)", "bench on"),
            row(on, "bench on", "matched loop (Adam + warmup, clip, EMA)", "train matched", True),
            row(on, "bench on", "plain loop (Adam only: not the same training)", "train plain"),
            row(off, "bench off", "bench (CaseRunner, `train_time_s`)", "bench off"),
            row(off, "bench off", "plain loop (Adam only)", "train plain", True),
            row("sample", "bench sample", "bench (`CaseRunner.sample`, as in a run)", "bench sample"),
            row("sample", "bench sample", "Ancestral.sample, per-sample RNG, no hooks", "sample per-sample"),
            row("sample", "bench sample", "Ancestral.sample, batch RNG", "sample batch"),
            row("sample", "bench sample", "hand-written ancestral loop, the same per-sample streams",
                "sample hand streams", True),
            row("sample", "bench sample", "hand-written ancestral loop, torch.randn per batch", "sample hand", True)]
    body = C.table(["phase", "variant", "seconds, median [min-max]", "bench / variant", "ratio of minima"], rows)
    notes = [f"{args.dataset}, ddpm + {'unet' if image else 'mlp'}, {steps} training steps of batch "
             f"{case.train['batch_size']}; ancestral {args.sample_steps} steps, {n} samples in batches of {bs}; "
             f"{args.repeats} interleaved repeats",
             f"max |hand-written - Ancestral.sample| with the same noise: {diff:.2e} (torch.randn), "
             f"{diff_streams:.2e} (per-sample streams, against the samples of `CaseRunner.sample`)",
             "target (bold): bench / the loop doing the same training, and bench / hand-written sampling, <= 1.05"]
    C.emit("Harness overhead: bench vs hand-written loops", body, args, notes)


if __name__ == "__main__":
    main()
