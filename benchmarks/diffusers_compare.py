"""bench_diffusion's ancestral and DDIM samplers vs diffusers' DDPMScheduler / DDIMScheduler.

The same briefly trained network (bench's ``ddpm`` family built through the registries: bench_nets
``mlp`` on toy2d/8gaussians, ``unet`` on digits8; T = 1000, linear betas 1e-4..0.02, float32)
is driven by both from the same initial noise and, for ancestral sampling, the same injected noise:
bench's sampler gets a ``BatchRNG`` and diffusers a ``torch.Generator`` with the same seed, and both
draw in the same order (as in tests/test_diffusion_diffusers.py). Conventions mapped: diffusers'
0-based timestep k is bench's level k + 1, so the network gets k + 1; ``leading`` spacing; clipping
of x0 on images (diffusers ``clip_sample``, DDIM ``use_clipped_model_output``).

Measured, interleaved over ``--repeats``: seconds for the whole sample set (same batches) with
bench's sampler (shared noise), with bench's sampler on per-sample streams as in a run
(``PerSampleRNG``), and with the diffusers loop; bench / diffusers (median of per-repeat ratios);
max |bench - diffusers| over all samples (shared noise; diffusers keeps its schedule in float32,
bench in float64).
"""
from __future__ import annotations

import torch

import _common as C

CASES = [  # dataset, training steps, training batch, samples, sampling batch
    ("toy2d/8gaussians", 300, 256, 1000, 500),
    ("digits8", 40, 128, 128, 128),
]
SAMPLERS = [("ancestral", 50), ("ddim", 50), ("ancestral", 20), ("ddim", 20)]


def scheduler(name: str, clip: bool):
    import diffusers

    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip,
              timestep_spacing="leading")
    if name == "ancestral":
        return diffusers.DDPMScheduler(variance_type="fixed_small", **kw)
    return diffusers.DDIMScheduler(set_alpha_to_one=True, **kw)


def run_diffusers(sched, net, shape, steps, n, bs, seed, ddim: bool):
    outs = []
    with torch.no_grad():
        for lo in range(0, n, bs):
            b = min(bs, n - lo)
            g = torch.Generator().manual_seed(seed + lo)
            x = torch.randn((b, *shape), generator=g)
            sched.set_timesteps(steps)
            for k in sched.timesteps:
                out = net(x, torch.full((b,), float(k) + 1))
                if ddim:
                    x = sched.step(out, k, x, eta=0.0, use_clipped_model_output=True).prev_sample
                else:
                    x = sched.step(out, k, x, generator=g).prev_sample
            outs.append(x)
    return torch.cat(outs)


def run_bench(sampler, family, n, bs, seed, per_sample: bool):
    from bench.rng import BatchRNG, sample_batches

    rngs = sample_batches(seed, 0, n, bs) if per_sample else \
        (BatchRNG(seed + lo, min(bs, n - lo)) for lo in range(0, n, bs))
    with torch.no_grad():
        return torch.cat([sampler.sample(family, rng) for rng in rngs])


def main() -> None:
    p = C.parser(__doc__, repeats=7)
    args = p.parse_args()
    C.setup(args)
    regs = C.registries()
    rows = []
    for name, train_steps, batch, n, bs in CASES:
        if args.quick:
            train_steps, n, args.repeats = train_steps // 4, n // 4, min(args.repeats, 3)
        dataset = regs.dataset.create({"name": name})
        family = C.build("family", {"name": "ddpm"}, dataset)
        C.quick_train(family, dataset.split("train"), train_steps, batch)
        clip = family.value_range is not None
        net = family.net
        for kind, steps in SAMPLERS:
            sampler = regs.sampler.create({"name": kind, "steps": steps})
            sched = scheduler(kind, clip)
            fns = {
                "bench": lambda: run_bench(sampler, family, n, bs, 0, False),
                "bench per-sample": lambda: run_bench(sampler, family, n, bs, 0, True),
                "diffusers": lambda: run_diffusers(sched, net, family.shape, steps, n, bs, 0, kind == "ddim"),
            }
            diff = float((fns["bench"]() - fns["diffusers"]()).abs().max())
            t = C.interleave({k: (lambda f=f: C.wall(f)) for k, f in fns.items()}, args.repeats, warmup=False)
            rows.append([name, f"{kind} {steps}", n, C.spread(t["bench"]), C.spread(t["diffusers"]),
                         f"**{C.ratio(t, 'bench', 'diffusers'):.3f}**", C.spread(t["bench per-sample"]),
                         f"{C.ratio(t, 'bench per-sample', 'diffusers'):.3f}", f"{diff:.1e}"])
    body = C.table(["data (network)", "sampler, steps", "samples", "bench s", "diffusers s", "bench / diffusers",
                    "bench, per-sample RNG s", "ratio", "max abs diff"], rows)
    notes = [f"{args.repeats} interleaved repeats; seconds are median [min-max] for the whole sample set",
             "same network, initial noise and injected noise in `bench` and `diffusers`; "
             "`bench, per-sample RNG` is the sampler as a run calls it (`PerSampleRNG` streams)"]
    C.emit("Samplers: bench_diffusion vs diffusers", body, args, notes)


if __name__ == "__main__":
    main()
