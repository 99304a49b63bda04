"""The latent ODE of `suites/results-latent-ode.yaml` against the reference predictors, paired per test
video (docs/results.md section 5): extrapolation MSE and SSIM of frames 11-20 on the 100 test videos,
the model's mean minus each predictor's with a 95% t-interval over videos and the paired t-test's p.

    python docs/scripts/latent_ode_paired.py STORE   # the store of a `bench run suites/results-latent-ode.yaml`

Predictors: the blank (black) frame, the average training frame, frame 10 repeated. Every checkpoint in
STORE is a model (one per training seed; its EMA weights, as the `video` metric evaluates it), with
one table each; with several, their mean extrapolation MSE and SSIM with a 95% t-interval over the
training seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("store", type=Path, help="the bench store the suite's run used")
    args = p.parse_args()
    from scipy import stats

    from bench_data.moving_digits import MovingDigits
    from bench_flows.latent_ode import LatentODE
    from bench_metrics.video import mse_per_frame, ssim_per_frame, to_unit

    torch.set_num_threads(1)
    paths = sorted(args.store.glob("**/checkpoint.pt"), key=lambda q: q.stat().st_mtime)
    if not paths:
        raise SystemExit(f"no checkpoint.pt under {args.store}")
    ds = MovingDigits(num_digits=1, n_train=600, n_test=100)

    class Context:
        data = ds.info

    test, train = ds.split("test"), ds.split("train")
    truth = to_unit(test[:, 10:])
    references = {"blank frame": -torch.ones_like(test[:, 10:]),
                  "average training frame": train.mean((0, 1), keepdim=True).expand_as(test[:, 10:]),
                  "frame 10 repeated": test[:, 9:10].expand_as(test[:, 10:])}

    def per_video(frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"MSE": mse_per_frame(to_unit(frames), truth).mean(1).double(),
                "SSIM": ssim_per_frame(to_unit(frames), truth).mean(1).double()}

    def interval(d) -> str:
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / len(d) ** 0.5
        p = f", p = {stats.ttest_1samp(d, 0).pvalue:.1g}" if len(d) > 1 else ""
        return f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]{p}"

    ref = {name: per_video(v) for name, v in references.items()}
    means = []
    for path in paths:
        case = json.loads((path.parent / "entry.json").read_text()).get("meta", {}).get("case", "?")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = LatentODE(context=Context, variant="deterministic", encoder="stack", likelihood="bernoulli",
                          train_frames="all", latent_dim=16, channels=[8, 16, 32], solver="rk4", step_size=0.1)
        model.load_state_dict(state["ema_state"] or state["state"])
        model.eval()
        with torch.no_grad():
            _, predicted = model.reconstruct_and_predict(test[:, :10], range(10), range(10, 20))
        mine = per_video(predicted)
        means.append({k: float(v.mean()) for k, v in mine.items()})
        print(f"\n{case} ({'EMA' if state['ema_state'] else 'raw'} weights): extrapolation MSE "
              f"{means[-1]['MSE']:.4f}, SSIM {means[-1]['SSIM']:.4f}; n = {len(test)} test videos\n")
        print("| model - predictor | extrapolation MSE | extrapolation SSIM |")
        print("|---|---|---|")
        for name in references:
            cells = [interval((mine[key] - ref[name][key]).numpy()) for key in ("MSE", "SSIM")]
            print(f"| model - {name} | " + " | ".join(cells) + " |")
    if len(means) > 1:
        import numpy as np

        print(f"\nacross the {len(means)} trained models (95% t-interval over training seeds):")
        for key in ("MSE", "SSIM"):
            v = np.array([m[key] for m in means])
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5
            print(f"  extrapolation {key}: {v.mean():.4f} [{v.mean() - half:.4f}, {v.mean() + half:.4f}] "
                  f"(per model: {', '.join(f'{x:.4f}' for x in v)})")
        for name in references:
            print(f"  {name}: MSE {float(ref[name]['MSE'].mean()):.4f}, SSIM {float(ref[name]['SSIM'].mean()):.4f}")


if __name__ == "__main__":
    main()
