"""The latent ODE VAE's posterior collapse (docs/results.md section 5): how much the posterior mean
mu = q(context) varies across test videos during training, for a few VAE settings.

    python docs/scripts/latent_ode_vae_collapse.py --steps 150 --every 50 [--config NAME ...]

Each configuration is built from the registry as ``bench run`` builds it (moving_digits, one digit,
600 training clips; torch's global seed from the case seed) and trained with
:func:`bench.trainer.train` (batch 32, lr 3e-3, 20 warm-up steps, clipping 100, no EMA); every
``--every`` steps (the trainer's ``save`` callback) it prints the standard deviation of mu across the
first 50 test videos, averaged over the latent dimensions, and the mean KL per dimension.
"""
from __future__ import annotations

import argparse
import json

import torch

BASE = {"name": "latent_ode", "variant": "vae", "likelihood": "bernoulli", "train_frames": "all",
        "latent_dim": 16, "channels": [8, 16, 32], "solver": "rk4", "step_size": 0.1}
CONFIGS = {
    "gru": {"encoder": "gru"},  # the VAE's default encoder
    "stack": {"encoder": "stack"},
}
TRAIN = {"steps": 150, "batch_size": 32, "lr": 3e-3, "ema": 0.0, "grad_clip": 100.0, "weight_decay": 0.0,
         "warmup": 20, "log_every": 50, "num_workers": 0}


def measure(name: str, steps: int, every: int, seed: int = 0) -> list[dict]:
    import tempfile
    from pathlib import Path

    from bench import trainer
    from bench.context import BuildContext
    from bench.plugins import get_manager
    from bench.rng import derive_seed
    from bench.store import Store

    regs = get_manager(()).registries
    store = Store(Path(tempfile.mkdtemp(prefix="lode-vae-")))
    ctx = BuildContext.from_registries(regs, seed=seed, store=store)
    dataset = regs.dataset.create({"name": "moving_digits", "num_digits": 1, "n_train": 600, "n_test": 100},
                                  context=ctx)
    torch.manual_seed(derive_seed(seed, "torch-global"))
    ctx = BuildContext.from_registries(regs, seed=seed, store=store, dataset=dataset)
    family = regs.family.create({**BASE, **CONFIGS[name]}, context=ctx)
    test = dataset.split("test")[:50, :10]
    rows = []

    def save(state: dict, finished: bool) -> None:
        with torch.no_grad():
            mu, logvar, _ = family.encode(test)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
        rows.append({"config": name, "step": state["step"], "mu_std": float(mu.std(0).mean()),
                     "kl_per_dim": float(kl.mean())})
        print(json.dumps(rows[-1]), flush=True)

    trainer.train(family, dataset, {**TRAIN, "steps": steps, "checkpoint_every": every}, seed,
                  lambda it, **kw: it, lambda where: None, save=save)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--config", action="append", choices=sorted(CONFIGS), help="default: all")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in args.config or list(CONFIGS):
        measure(name, args.steps, args.every)


if __name__ == "__main__":
    main()
