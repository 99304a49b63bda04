"""Does a trained MCVD model use its conditioning frames? (docs/results.md section 7)

    python docs/scripts/mcvd_diagnose.py RUN_DIR STORE    # a run of suites/video.yaml and its store

For each `mcvd` case of the run, its checkpoint (EMA weights, as the metrics use them) is loaded and
the one-step estimate of the target frames from x_t (diffusion-math.md 6.2.2)

    x0_hat = (x_t - sigma_t eps_theta(x_t | c, t)) / alpha_t,   x_t = alpha_t x_0 + sigma_t eps

is scored (MSE in [0, 1], clamped) at several t on the first 32 test clips (or all, if fewer) (frames 6-10 given 1-5),
once with the true past frames as c and once with both blocks masked (unconditional). A model that
uses its context does much better with it at large t, where x_t says almost nothing about x_0. The
last context frame repeated and the blank frame are printed as references. The same eps draws serve
every row (seed 0).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)
N = 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("run", type=Path, help="a run directory of suites/video.yaml (results/video/<stamp>)")
    p.add_argument("store", type=Path, help="the store that run used")
    args = p.parse_args()
    from bench.context import BuildContext
    from bench.plugins import get_manager
    from bench.store import Store
    from bench_diffusion.mcvd import FrameConditionedNet

    torch.set_num_threads(1)
    regs = get_manager().registries
    unit = lambda z: (z.clamp(-1, 1) + 1) / 2  # noqa: E731
    mse = lambda a, b: float(((unit(a) - unit(b)) ** 2).mean())  # noqa: E731
    header_done = False
    for rec_path in sorted(args.run.glob("cases/*/record.json")):
        rec = json.loads(rec_path.read_text())
        spec = dict(rec["config"]["family"])
        if spec.get("name") != "mcvd" or rec["status"] != "ok":
            continue
        found = sorted(args.store.glob(f"checkpoints/*/{rec['train_key']}*/checkpoint.pt"))
        if not found:
            print(f"{rec['labels']['family']}: no checkpoint for train key {rec['train_key']} in {args.store}")
            continue
        ds_spec = dict(rec["config"]["dataset"])
        ds_spec.pop("id", None)
        data = regs.dataset.create(ds_spec)
        ctx = BuildContext.from_registries(regs, seed=0, store=Store(tempfile.mkdtemp(prefix="mcvd-diagnose-")),
                                           data=data.info, dataset=data)
        spec.pop("id", None)
        fam = ctx.build("family", spec)
        state = torch.load(found[0], map_location="cpu", weights_only=True)
        fam.load_state_dict(state["ema_state"] or state["state"])
        fam.eval()
        test = data.split("test")[:N]
        n = len(test)
        past, x0 = test[:, :fam.past], test[:, fam.past:fam.past + fam.current]
        if not header_done:
            print("| model | " + " | ".join(f"t = {t}: with context / masked" for t in TIMES) + " |")
            print("|---|" + "---|" * len(TIMES))
            header_done = True
        gen = torch.Generator().manual_seed(0)
        cells = []
        for t_val in TIMES:
            t = torch.full((n,), t_val, dtype=torch.float64)
            eps = torch.randn(x0.shape, generator=gen)
            xt = fam.process.q_sample(x0, t, eps)
            a, s = (float(v[0]) for v in fam.process.alpha_sigma(t))
            out = []
            for cond in (fam.conditioning(past, None, n), fam.conditioning(None, None, n)):
                with torch.no_grad():
                    eh = FrameConditionedNet(fam.net, cond)(xt, fam.time_input(t, n, xt.device))
                out.append(mse((xt - s * eh) / a, x0))
            cells.append(f"{out[0]:.4f} / {out[1]:.4f}")
        print(f"| {rec['labels']['family']} | " + " | ".join(cells) + " |")
    if header_done:
        last = past[:, -1:].expand_as(x0)
        print(f"\nreferences on the same {n} clips: last context frame repeated {mse(last, x0):.4f}, "
              f"blank frame {mse(-torch.ones_like(x0), x0):.4f} (MSE in [0, 1])")


if __name__ == "__main__":
    main()
