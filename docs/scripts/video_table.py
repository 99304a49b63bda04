"""docs/results.md section 7 from one run of `suites/video.yaml`: the tables in the shape of the
thesis's Table 7.3 / 7.9 (prediction 5 -> 10), 7.8 (interpolation), past prediction and 7.5
(generation), with reference predictors scored by the same metric code on the same test clips,
and paired differences between the families on those clips.

    python docs/scripts/video_table.py RUN_DIR [RUN_DIR ...]   # results/video/<stamp> of `bench run suites/video.yaml`

Several run directories (e.g. one case rerun on its own) are read in order; a family's later finished
case replaces an earlier one.

Intervals: FVD's is the metric's bootstrap interval; the others are 95% Student-t intervals over
the test clips (a clip's value is its mean over the task's frames and the trajectories), from the
per-clip artifacts. Paired differences are per clip (the same clips for every family), with the
paired t-test's p and Benjamini-Hochberg q over all the differences printed. One trained model per
family (one training seed): the intervals cover test clips, not training seeds.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

REFERENCES = {
    "predict": ("blank (black) frame", "last context frame repeated", "average training frame"),
    "interpolate": ("blank (black) frame", "last past frame repeated", "crossfade of the two frames around the gap"),
    "past": ("blank (black) frame", "first context frame repeated"),
}
TASK_FRAMES = {  # (context, targets), 0-based, as the suite's metrics ask (bench_metrics.video.task_frames)
    "predict": (list(range(5)), list(range(5, 15))),
    "interpolate": (list(range(5)) + [10, 11], list(range(5, 10))),
    "past": (list(range(5, 10)), list(range(5))),
}
CSV = {"predict": "video_per_clip.csv", "interpolate": "video_interpolate_per_clip.csv",
       "past": "video_past_per_clip.csv"}
PART = {"predict": "extrap", "interpolate": "interpolate", "past": "past"}


def per_clip(path: Path, part: str) -> dict[str, np.ndarray] | None:
    """A family's per-clip values of ``part``, averaged over trajectories, and best of trajectories;
    keys ``{m}`` and ``{m}_best`` for m in mse, psnr, ssim, and ``clip`` (the dataset rows)."""
    if not path.exists():
        return None
    rows = list(csv.DictReader(path.open()))
    clips = sorted({int(r["clip"]) for r in rows})
    out: dict[str, np.ndarray] = {"clip": np.array(clips)}
    for m in ("mse", "psnr", "ssim"):
        by = np.array([[float(r[f"{part}_{m}"]) for r in rows if int(r["clip"]) == c] for c in clips])
        out[m] = by.mean(1)
        out[f"{m}_best"] = by.min(1) if m == "mse" else by.max(1)
    out["trajectories"] = np.array(by.shape[1])
    return out


def reference_values(ds, task: str, clips: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Per-clip MSE, PSNR and SSIM of the reference predictors of ``task`` on ``clips``."""
    from bench_metrics.video import mse_per_frame, psnr_from_mse, ssim_per_frame, to_unit

    test, train = ds.split("test")[torch.as_tensor(clips)], ds.split("train")
    ci, ti = TASK_FRAMES[task]
    truth = test[:, ti]
    guesses = {"blank (black) frame": -torch.ones_like(truth),
               "average training frame": train.mean((0, 1), keepdim=True).expand_as(truth),
               "last context frame repeated": test[:, ci[-1]:ci[-1] + 1].expand_as(truth),
               "last past frame repeated": test[:, 4:5].expand_as(truth),
               "first context frame repeated": test[:, ci[0]:ci[0] + 1].expand_as(truth)}
    w = torch.arange(1, len(ti) + 1, dtype=truth.dtype).view(1, -1, 1, 1, 1) / (len(ti) + 1)
    guesses["crossfade of the two frames around the gap"] = (1 - w) * test[:, 4:5] + w * test[:, 10:11]
    out = {}
    for name in REFERENCES[task]:
        u, v = to_unit(guesses[name]), to_unit(truth)
        mse = mse_per_frame(u, v)
        out[name] = {"mse": mse.mean(1).numpy(), "psnr": psnr_from_mse(mse).mean(1).numpy(),
                     "ssim": ssim_per_frame(u, v).mean(1).numpy()}
    return out


def fmt_ci(x: np.ndarray, digits: int = 3) -> str:
    from bench.stats import t_interval
    iv = t_interval(x.tolist())
    return f"{iv.mean:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories of suites/video.yaml (results/video/<stamp>)")
    args = p.parse_args()
    from bench.stats import benjamini_hochberg, paired_difference
    from bench_data.moving_digits import MovingDigits

    torch.set_num_threads(1)
    cases = {}
    for rec_path in [p for run in args.runs for p in sorted(run.glob("cases/*/record.json"))]:
        rec = json.loads(rec_path.read_text())
        if rec["status"] == "ok":
            cases[rec["labels"]["family"]] = (rec, rec_path.parent / "artifacts")
    if not cases:
        raise SystemExit(f"no finished case under {', '.join(map(str, args.runs))}")
    ds_cfg = next(iter(cases.values()))[0]["config"]["dataset"]
    ds = MovingDigits(**{k: v for k, v in ds_cfg.items() if k not in ("name", "id")})
    values: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # task -> row -> per-clip values

    for task in ("predict", "interpolate", "past"):
        rows: dict[str, dict[str, np.ndarray]] = {}
        for fam, (rec, art) in cases.items():
            got = per_clip(art / CSV[task], PART[task])
            if got is not None:
                rows[fam] = got
        if not rows:
            continue
        clips = next(iter(rows.values()))["clip"]
        assert all(np.array_equal(r["clip"], clips) for r in rows.values()), "families scored on different clips"
        rows.update(reference_values(ds, task, clips))
        values[task] = rows
        title = {"predict": "Prediction, 5 -> 10 frames (Table 7.3 / 7.9 shape)",
                 "interpolate": "Interpolation of 5 frames between 5 past and 2 future (Table 7.8 shape)",
                 "past": "Past prediction of 5 frames before 5 (the past-future models)"}[task]
        print(f"\n### {title}\n")
        fvd = task == "predict"
        print("| model | " + ("FVD (local) [95% CI] | " if fvd else "") + "SSIM best of K | SSIM [95% CI] | "
              "PSNR best of K | PSNR [95% CI] | MSE [95% CI] |")
        print("|---|" + ("---|" if fvd else "") + "---|---|---|---|---|")
        for name, v in rows.items():
            cells = []
            if fvd:
                m = cases[name][0]["metrics"] if name in cases else {}
                cells.append(f"{m['fvd']:.2f} [{m['fvd_ci_lo']:.2f}, {m['fvd_ci_hi']:.2f}]" if "fvd" in m else "-")
            best = "ssim_best" in v
            cells += [f"{v['ssim_best'].mean():.3f}" if best else "-", fmt_ci(v["ssim"]),
                      f"{v['psnr_best'].mean():.2f}" if best else "-", fmt_ci(v["psnr"], 2), fmt_ci(v["mse"], 4)]
            print(f"| {name} | " + " | ".join(cells) + " |")
        ks = sorted({int(v["trajectories"]) for v in rows.values() if "trajectories" in v})
        print(f"\n{len(clips)} test clips; families: {'/'.join(map(str, ks))} trajectories each (a deterministic "
              "family's best equals its mean); references: one prediction.")
        if fvd:
            floor = {round(c[0]['metrics']['fvd_floor'], 4) for c in cases.values() if 'fvd_floor' in c[0]['metrics']}
            print(f"FVD floor (the true clips of the same test videos): {', '.join(map(str, sorted(floor)))}.")

    gen = {f: c[0]["metrics"] for f, c in cases.items() if "fvd_generate" in c[0]["metrics"]}
    if gen:
        print("\n### Unconditional generation of 10 frames (Table 7.5 shape)\n")
        print("| model | FVD (local) [95% CI] | floor |")
        print("|---|---|---|")
        for fam, m in gen.items():
            print(f"| {fam} | {m['fvd_generate']:.2f} [{m['fvd_generate_ci_lo']:.2f}, {m['fvd_generate_ci_hi']:.2f}] | "
                  f"{m['fvd_generate_floor']:.3f} |")

    pairs = [(t, a, b) for t, rows in values.items() for a in rows if a in cases for b in rows
             if (b in cases and a < b) or b not in cases]  # family - family, family - reference
    diffs = [(t, a, b, paired_difference(values[t][a]["ssim"], values[t][b]["ssim"])) for t, a, b in pairs]
    if diffs:
        q = benjamini_hochberg([d.p for *_, d in diffs])
        print("\n### Paired differences of SSIM (mean over trajectories), per test clip\n")
        print("| task | a - b | difference [95% CI] | p | BH q |")
        print("|---|---|---|---|---|")
        for (t, a, b, d), qi in zip(diffs, q):
            print(f"| {t} | {a} - {b} | {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] | {d.p:.2g} | {qi:.2g} |")
        print(f"\n{len(diffs)} differences; q is over all of them.")


if __name__ == "__main__":
    main()
