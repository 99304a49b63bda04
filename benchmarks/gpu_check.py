"""GPU check: train, sample and score a CIFAR-sized DDPM on one device, through bench's own code paths.

    python benchmarks/gpu_check.py                      # on a CUDA machine (about 3-4 minutes on one modern GPU)
    python benchmarks/gpu_check.py --device cpu --quick # a smoke run on the CPU (seconds)

What it does, for fp32 and bf16 (``bench.device`` precision): builds ``ddpm`` on 32x32x3 images with the
largest built-in UNet (``config: ddpm_cifar10`` where bench_nets has it, else base 128 with mults
1-2-2-2), trains it ``--steps`` steps with ``bench.trainer.train`` (the loop ``bench run`` uses), samples
``--samples`` images with DDIM at 50 steps through ``bench.runner.CaseRunner.sample`` (per-sample Philox
streams, NFE hooks, device clock), and times a hand-written DDIM loop on the same network and batch
size. The data are ``gaussian_image`` (a seeded Gaussian image distribution built locally: nothing is
downloaded; CIFAR-10 itself is not needed for a throughput and agreement check). FID uses the
random-projection features of ``bench_metrics`` (``random-proj``: NOT perceptual, a smoke metric) and,
when ``--inception WEIGHTS`` is given and torch-fidelity is installed, Inception-v3 pool3 features.

The last column is the largest absolute difference between the first ``--compare`` samples drawn on
the device and the same case (same trained weights, same per-sample seeds) sampled on the CPU in fp32,
in a batch of ``--compare`` (so it includes the effect of the batch size on the convolution kernels:
about 1e-5 even CPU against CPU).

One table is printed. MLflow is never imported (tracking is off); torch-fidelity only with
``--inception``. Needs bench, its plugins, torch, numpy, pyyaml and pydantic.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "plugins"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench.context import BuildContext  # noqa: E402
from bench.device import autocast, resolve_device  # noqa: E402
from bench.plugins import get_manager  # noqa: E402
from bench.runner import CaseJob, CaseRunner, RunSettings  # noqa: E402
from bench.store import Store  # noqa: E402
from bench.suite import Case  # noqa: E402
from bench.timing import DeviceClock, peak_gpu_mem_mb  # noqa: E402
from bench.trainer import train  # noqa: E402

FULL = {"steps": 300, "batch_size": 128, "samples": 10_000, "sample_batch": 1000, "ddim_steps": 50,
        "n_data": 10_000, "compare": 16, "network": [{"name": "unet", "config": "ddpm_cifar10"},
                                                    {"name": "unet", "base": 128, "mults": [1, 2, 2, 2]}]}
QUICK = {"steps": 3, "batch_size": 8, "samples": 32, "sample_batch": 16, "ddim_steps": 3,
         "n_data": 128, "compare": 4, "network": [{"name": "unet", "base": 16, "mults": [1, 2]}]}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID's formula on feature rows a, b: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
    the square roots taken by symmetric eigendecomposition in float64 (negative round-off clipped)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to uint8 RGB, as bench's image metrics quantise."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def random_proj_features(images_u8: torch.Tensor, dim: int = 64, seed: int = 0) -> np.ndarray:
    """``random-proj`` features: W x for the uint8 image scaled to [-1, 1], W = N(0, 1/(3HW)) from ``seed``
    (the weights of bench_metrics' RandomProjection, computed here without torch-fidelity)."""
    n, c, h, w = images_u8.shape
    in_dim = 3 * h * w
    weight = torch.randn(dim, in_dim, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64).div(in_dim ** 0.5).float()
    x = images_u8.float().div(127.5).sub(1).expand(n, 3, h, w).reshape(n, -1)
    return (x @ weight.t()).double().numpy()


def inception_features(images_u8: torch.Tensor, weights: str, device: str) -> np.ndarray:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    net = net.to(device).eval()
    out = []
    with torch.no_grad():
        for chunk in images_u8.split(500):
            out.append(net(chunk.to(device))[0].double().cpu())
    return torch.cat(out).numpy()


def build(regs, store: Store, cfg: dict, device: str, precision: str):
    """Dataset, family (on ``device``) and DDIM sampler through the registries, as a case builds them."""
    dspec = {"name": "gaussian_image", "size": 32, "channels": 3, "n_train": cfg["n_data"], "n_test": cfg["n_data"]}
    dataset = regs.dataset.create(dspec, context=BuildContext.from_registries(regs, seed=0, store=store))
    ctx = BuildContext.from_registries(regs, seed=0, store=store, dataset=dataset, device=device, precision=precision)
    errors = []
    for net in cfg["network"]:
        fspec = {"name": "ddpm", "network": net}
        try:
            family = regs.family.create(fspec, context=ctx).to(device)
            break
        except Exception as exc:  # an older bench_nets without the named config: the next candidate
            errors.append(f"{net}: {exc}")
    else:
        raise SystemExit("no network could be built: " + "; ".join(errors))
    sspec = {"name": "ddim", "steps": cfg["ddim_steps"]}
    sampler = regs.sampler.create(sspec, context=ctx)
    return dataset, family, sampler, dspec, fspec, sspec


def case_runner(dspec, fspec, sspec, cfg, device, precision, workdir: Path) -> CaseRunner:
    tcfg = {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "lr": 2e-4, "ema": 0.0, "grad_clip": 1.0,
            "weight_decay": 0.0, "warmup": 0, "log_every": None}
    case = Case("gpu_check", dspec, fspec, sspec, [], tcfg,
                {"num_samples": cfg["samples"], "batch_size": cfg["sample_batch"], "grid": 0}, {}, 0,
                device=device, precision=precision)
    job = CaseJob(case.to_dict(), RunSettings(store=str(workdir / "store"), results_dir=str(workdir / "results"),
                                              quiet=True))
    return CaseRunner(case, job)


def hand_ddim_seconds(family, cfg: dict, device: str, precision: str) -> float:
    """A hand-written deterministic DDIM loop on the same network: torch.randn start, the same 50 times,
    x0 = (x - s eps) / a, x <- a' x0 + s' eps; no hooks, no per-sample streams."""
    proc = family.process
    times = proc.sampling_times(cfg["ddim_steps"])
    coef = [proc.alpha_sigma_floats(t) for t in times]
    gen = torch.Generator(device=device).manual_seed(0)
    clock = DeviceClock(device)
    clock.start()
    with torch.no_grad():
        for lo in range(0, cfg["samples"], cfg["sample_batch"]):
            n = min(cfg["sample_batch"], cfg["samples"] - lo)
            x = torch.randn((n, *family.shape), generator=gen, device=device)
            for i, t in enumerate(times):
                tin = torch.full((n,), 1000.0 * t, device=device)
                with autocast(device, precision):
                    eps = family.net(x, tin).float()
                a, s = coef[i]
                x0 = (x - s * eps) / a
                if i + 1 < len(times):
                    a2, s2 = coef[i + 1]
                    x = a2 * x0 + s2 * eps
    return clock.stop()


def check(precision: str, cfg: dict, device: str, regs, workdir: Path, inception: str | None) -> dict:
    store = Store(workdir / "store")
    torch.manual_seed(0)
    dataset, family, sampler, dspec, fspec, sspec = build(regs, store, cfg, device, precision)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    tcfg = case_runner(dspec, fspec, sspec, cfg, device, precision, workdir).case.train
    state = train(family, dataset, tcfg, 0, lambda it, **_: it, lambda where: None, device=device,
                  precision=precision)
    family.eval()
    runner = case_runner(dspec, fspec, sspec, cfg, device, precision, workdir)
    out = runner.sample(family, sampler, cfg["samples"])
    hand = hand_ddim_seconds(family, cfg, device, precision)
    batches = math.ceil(cfg["samples"] / cfg["sample_batch"])
    row = {"precision": precision, "train_steps_per_s": cfg["steps"] / state["train_time_s"],
           "samples_per_s": cfg["samples"] / out.seconds, "ms_per_nfe": 1000 * out.seconds / (out.nfe * batches),
           "peak_gpu_mem_mb": peak_gpu_mem_mb(device), "bench_over_hand": out.seconds / hand}
    ref = dataset.split("test")
    row["fid_random_proj"] = frechet_distance(random_proj_features(to_uint8(out.samples)),
                                              random_proj_features(to_uint8(ref)))
    if inception:
        try:
            row["fid_inception"] = frechet_distance(inception_features(to_uint8(out.samples), inception, device),
                                                    inception_features(to_uint8(ref), inception, device))
        except ImportError:
            row["fid_inception"] = "n/a (no torch-fidelity)"
    # the same case on the CPU in fp32: same weights, same per-sample seeds, the first samples only
    cpu_family = build(regs, store, cfg, "cpu", "fp32")[1]
    cpu_family.load_state_dict({k: v.cpu() for k, v in family.state_dict().items()})
    cpu_family.eval()
    small = {**cfg, "samples": cfg["compare"], "sample_batch": cfg["compare"]}
    cpu_runner = case_runner(dspec, fspec, sspec, small, "cpu", "fp32", workdir)
    first = cpu_runner.sample(cpu_family, sampler, cfg["compare"]).samples
    row["max_diff_vs_cpu"] = float((out.samples[:cfg["compare"]] - first).abs().max())
    return row


def table(rows: list[dict], device_name: str) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"device: {device_name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu, mps or auto (default cuda)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (seconds on a CPU)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    p.add_argument("--steps", type=int, help="training steps (default 300; quick 5)")
    p.add_argument("--samples", type=int, help="samples drawn (default 10000; quick 64)")
    p.add_argument("--inception", help="Inception-v3 weights file (FID in Inception features too)")
    p.add_argument("--output", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except Exception as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in (("steps", args.steps), ("samples", args.samples)) if v})
    regs = get_manager().registries
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-check-") as tmp:
        rows = [check(prec, cfg, device, regs, Path(tmp), args.inception) for prec in args.precisions.split(",")]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    text = table(rows, name) + f"\n\ntotal {time.perf_counter() - start:.0f} s; {cfg['samples']} samples, " \
        f"DDIM {cfg['ddim_steps']} steps, {cfg['steps']} training steps at batch {cfg['batch_size']}"
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
