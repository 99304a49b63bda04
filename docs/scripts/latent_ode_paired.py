"""The latent ODE of `suites/results-latent-ode.yaml` against the reference predictors, paired per test
video (docs/results.md section 5): extrapolation MSE and SSIM of frames 11-20 on the 100 test videos,
the model's mean minus each predictor's with a 95% t-interval over videos and the paired t-test's p.

    python docs/scripts/latent_ode_paired.py STORE   # the store of a `bench run suites/results-latent-ode.yaml`

Predictors: the blank (black) frame, the average training frame, frame 10 repeated. The model is the
latest checkpoint in STORE (its EMA weights, as the `video` metric evaluates it).
"""
from __future__ import annotations

import argparse
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
    state = torch.load(paths[-1], map_location="cpu", weights_only=True)
    ds = MovingDigits(num_digits=1, n_train=600, n_test=100)

    class Context:
        data = ds.info

    model = LatentODE(context=Context, variant="deterministic", encoder="stack", likelihood="bernoulli",
                      train_frames="all", latent_dim=16, channels=[8, 16, 32], solver="rk4", step_size=0.1)
    model.load_state_dict(state["ema_state"] or state["state"])
    model.eval()
    test, train = ds.split("test"), ds.split("train")
    with torch.no_grad():
        _, predicted = model.reconstruct_and_predict(test[:, :10], range(10), range(10, 20))
    truth = to_unit(test[:, 10:])
    predictors = {"model": predicted, "blank frame": -torch.ones_like(test[:, 10:]),
                  "average training frame": train.mean((0, 1), keepdim=True).expand_as(test[:, 10:]),
                  "frame 10 repeated": test[:, 9:10].expand_as(test[:, 10:])}
    per_video = {k: {"MSE": mse_per_frame(to_unit(v), truth).mean(1).double(),
                     "SSIM": ssim_per_frame(to_unit(v), truth).mean(1).double()} for k, v in predictors.items()}
    print("| model - predictor | extrapolation MSE | extrapolation SSIM |")
    print("|---|---|---|")
    for name in list(predictors)[1:]:
        cells = []
        for key in ("MSE", "SSIM"):
            d = (per_video["model"][key] - per_video[name][key]).numpy()
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / len(d) ** 0.5
            cells.append(f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}], "
                         f"p = {stats.ttest_1samp(d, 0).pvalue:.1g}")
        print(f"| model - {name} | " + " | ".join(cells) + " |")
    print(f"\nn = {len(test)} test videos; checkpoint {paths[-1]}")


if __name__ == "__main__":
    main()
