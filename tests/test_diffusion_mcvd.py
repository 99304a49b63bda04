"""MCVD (thesis ch. 7; diffusion-math.md 6.2; docs/video.md): the masking, the conditional sampler, and
the sampled conditional distributions against the closed form of a linear-Gaussian video model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bench.protocols import DataInfo
from bench.rng import BatchRNG, PerSampleRNG
from bench_diffusion.families import build_process
from bench_diffusion.mcvd import MCVD
from bench_diffusion.samplers.discrete import DDIM, Ancestral
from bench_diffusion.samplers.multistep import DPMSolverPP2M
from bench_diffusion.testing import build, context, dataset
from bench_metrics.testing import metric_context
from bench_metrics.video import VideoMetrics

ROOT = Path(__file__).resolve().parents[1]


def make_family(past, current, future, mask, net=None, frame_shape=(1, 1, 1), T=1000):
    info = DataInfo(name="block", shape=(current, *frame_shape), modality="video")
    process = build_process("vp", "isotropic", "linear", T, context(info))
    return MCVD(process, net if net is not None else nn.Identity(), past=past, current=current, future=future,
                mask=mask)


# ---------------------------------------------------------------- masking (thesis 7.2.7-7.2.8)

def labelled_videos(n, frames):
    """Frame j of every clip is the constant j + 1, so a window's frames tell where it started."""
    return (torch.arange(frames, dtype=torch.float32) + 1).view(1, frames, 1, 1, 1).expand(n, frames, 1, 1, 1).clone()


def test_past_future_masking_gives_the_four_tasks_a_quarter_each():
    fam = make_family(2, 2, 2, "past_future")
    n, frames = 8000, 9
    cond, target, keep_p, keep_f = fam.training_example(labelled_videos(n, frames), BatchRNG(0, n))
    start = target[:, 0, 0, 0, 0].long() - 1 - 2  # the window's first (past) frame, 0-based
    assert set(start.tolist()) == set(range(frames - 6 + 1))  # every window position is drawn
    assert torch.equal(target[:, 1, 0, 0, 0], target[:, 0, 0, 0, 0] + 1)
    past_vals = (start[:, None] + torch.arange(2) + 1).float()
    future_vals = (start[:, None] + torch.arange(4, 6) + 1).float()
    past, future = cond[:, :2, 0, 0, 0], cond[:, 2:, 0, 0, 0]
    # a kept block is the true frames, a masked block is all zeros: nothing in between
    assert torch.equal(past, past_vals * keep_p[:, None]) and torch.equal(future, future_vals * keep_f[:, None])
    se = (0.25 * 0.75 / n) ** 0.5
    for kp, kf, task in ((1, 0, "predict"), (0, 1, "past"), (1, 1, "interpolate"), (0, 0, "generate")):
        freq = float(((keep_p == kp) & (keep_f == kf)).float().mean())
        assert abs(freq - 0.25) < 4.5 * se, (task, freq)


@pytest.mark.parametrize("mask,p_past,p_future", [("past", 0.5, 0.0), ("none", 0.0, 0.0)])
def test_past_mask_and_no_mask(mask, p_past, p_future):
    fam = make_family(2, 2, 1, mask)
    n = 6000
    cond, _, keep_p, keep_f = fam.training_example(labelled_videos(n, 6), BatchRNG(1, n))
    zero_p = (cond[:, :2] == 0).flatten(1).all(1).float().mean()
    zero_f = (cond[:, 2:] == 0).flatten(1).all(1).float().mean()
    assert float(zero_f) == p_future and float((1 - keep_f).mean()) == p_future
    assert abs(float(zero_p) - p_past) < 4.5 * (0.25 / n) ** 0.5
    assert torch.equal(zero_p, (1 - keep_p).mean())


def test_masking_settings_are_checked():
    with pytest.raises(ValueError, match="past_future needs future"):
        make_family(2, 2, 0, "past_future")
    with pytest.raises(ValueError, match="past >= 1"):
        make_family(0, 2, 0, "past")


# ---------------------------------------------------------------- exact denoiser of a linear-Gaussian video

A, B, S = 0.8, 0.3, 0.5  # x_{j+1} = A x_j + B + S n_j, stationary: mean B / (1 - A), variance S^2 / (1 - A^2)
MU, V0 = B / (1 - A), S * S / (1 - A * A)


def stationary(n):
    """Mean and covariance of n consecutive frames of the stationary AR(1) video."""
    j = np.arange(n)
    return np.full(n, MU), V0 * A ** np.abs(j[:, None] - j[None, :])


def conditional(n, observed, values, wanted):
    """Mean and covariance of frames ``wanted`` given frames ``observed`` = ``values`` (Gaussian conditioning)."""
    m, c = stationary(n)
    if not observed:
        return m[wanted], c[np.ix_(wanted, wanted)]
    gain = c[np.ix_(wanted, observed)] @ np.linalg.inv(c[np.ix_(observed, observed)])
    return (m[wanted] + gain @ (np.asarray(values) - m[observed]),
            c[np.ix_(wanted, wanted)] - gain @ c[np.ix_(observed, wanted)])


class ExactDenoiser(nn.Module):
    """eps(x_t | cond) = (x_t - alpha E[x_0 | x_t, cond]) / sigma for x_0 | cond ~ N(m, C) (a block of the
    stationary AR(1) video): E[x_0 | x_t] = m + alpha C (alpha^2 C + sigma^2 I)^-1 (x_t - alpha m).
    A zero conditioning block is a masked one (a true frame is never exactly 0)."""

    def __init__(self, process, past, current, future):
        super().__init__()
        self.process, self.p, self.k, self.f = process, past, current, future

    def forward(self, x, t_in, cond):
        a, s = self.process.alpha_sigma(float(t_in[0]) / 1000.0)
        a, s = float(a), float(s)
        xt, c = x.flatten(1).double(), cond.flatten(1).double()
        p, k, f = self.p, self.k, self.f
        seen_p, seen_f = c[:, :p].ne(0).any(1), c[:, p:].ne(0).any(1)
        out = torch.empty_like(xt)
        wanted = list(range(p, p + k))
        for sp in (False, True):
            for sf in (False, True):
                rows = (seen_p == sp) & (seen_f == sf)
                if not rows.any():
                    continue
                observed = (list(range(p)) if sp else []) + (list(range(p + k, p + k + f)) if sf else [])
                cols = (list(range(p)) if sp else []) + (list(range(p, p + f)) if sf else [])
                m0, cov = stationary(p + k + f)
                gain = (cov[np.ix_(wanted, observed)] @ np.linalg.inv(cov[np.ix_(observed, observed)])
                        if observed else np.zeros((k, 0)))
                m0 = torch.from_numpy(m0)
                m = m0[wanted] + (c[rows][:, cols] - m0[observed]) @ torch.from_numpy(gain).T
                ck = cov[np.ix_(wanted, wanted)] - gain @ cov[np.ix_(observed, wanted)]
                w = torch.from_numpy(a * ck @ np.linalg.inv(a * a * ck + s * s * np.eye(k)))
                x0 = m + (xt[rows] - a * m) @ w.T
                out[rows] = (xt[rows] - a * x0) / s
        return out.to(x.dtype).view_as(x)


def exact_family(past, current, future, mask="past_future"):
    fam = make_family(past, current, future, mask)
    fam.net = ExactDenoiser(fam.process, past, current, future)
    return fam


def check_gaussian(samples, mean, cov, n):
    """Sample mean within 4.5 standard errors, sample covariance entries within 5 standard errors
    (se of C_ij = sqrt((C_ii C_jj + C_ij^2) / n))."""
    x = samples.flatten(1).double().numpy()
    got_m, got_c = x.mean(0), np.cov(x.T)
    se_m = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(got_m - mean) < 4.5 * se_m), (got_m, mean)
    d = np.diag(cov)
    se_c = np.sqrt((d[:, None] * d[None, :] + cov ** 2) / n)
    assert np.all(np.abs(got_c - cov) < 5 * se_c), (got_c, cov)


N = 3000


@pytest.mark.parametrize("sampler", [Ancestral(steps=200), DPMSolverPP2M(steps=40)], ids=["ancestral", "dpmpp_2m"])
def test_predict_rollout_matches_the_closed_form(sampler):
    """Two blocks of k = 2 frames from one past frame (p = 1): the block-autoregressive rollout of four
    frames has the joint law of frames 1-4 given frame 0 (the AR(1) is Markov, so conditioning on the
    last frame is exact): mean MU + A^j (c - MU), cov V0 (A^|i-j| - A^(i+j))."""
    fam = exact_family(1, 2, 1)
    context = torch.full((N, 1, 1, 1, 1), 1.4)
    before = context.clone()
    out = fam.rollout("predict", context, 4, PerSampleRNG.for_indices(0, range(N)), sampler)
    assert out.shape == (N, 4, 1, 1, 1) and torch.equal(context, before)
    j = np.arange(1, 5)
    mean = MU + A ** j * (1.4 - MU)
    cov = V0 * (A ** np.abs(j[:, None] - j[None, :]) - A ** (j[:, None] + j[None, :]))
    check_gaussian(out, mean, cov, N)


@pytest.mark.parametrize("task", ["past", "interpolate", "generate"])
def test_other_tasks_match_the_closed_form(task):
    """past: frames 1-2 given frame 3 (future block only); interpolate: frames 1-2 given frames 0 and 3;
    generate: two frames of the stationary video (both blocks masked)."""
    fam = exact_family(1, 2, 1)
    rng = PerSampleRNG.for_indices(1, range(N))
    sampler = Ancestral(steps=200)
    if task == "past":
        out = fam.rollout("past", torch.full((N, 1, 1, 1, 1), -0.5), 2, rng, sampler)
        mean, cov = conditional(4, [3], [-0.5], [1, 2])
    elif task == "interpolate":
        ctx = torch.tensor([1.6, -0.2]).view(1, 2, 1, 1, 1).expand(N, 2, 1, 1, 1)
        out = fam.rollout("interpolate", ctx, 2, rng, sampler)
        mean, cov = conditional(4, [0, 3], [1.6, -0.2], [1, 2])
    else:
        out = fam.rollout("generate", None, 2, rng, sampler)
        mean, cov = conditional(2, [], [], [0, 1])
    check_gaussian(out, mean, cov, N)


def test_the_closed_form_check_can_fail():
    """The same check rejects the samples of the wrong conditional (given frame 0 = 1.0, not 1.4)."""
    fam = exact_family(1, 2, 1)
    out = fam.rollout("predict", torch.full((N, 1, 1, 1, 1), 1.0), 2, PerSampleRNG.for_indices(0, range(N)),
                      DDIM(steps=50))
    j = np.arange(1, 3)
    with pytest.raises(AssertionError):
        check_gaussian(out, MU + A ** j * (1.4 - MU), V0 * (A ** np.abs(j[:, None] - j[None, :])
                                                            - A ** (j[:, None] + j[None, :])), N)


def test_reconstruct_and_predict_leaves_the_context_untouched():
    fam = exact_family(1, 2, 1)
    fam.video_sampler = DDIM(steps=20)
    context = torch.randn(6, 3, 1, 1, 1)
    before = context.clone()
    recon, pred = fam.reconstruct_and_predict(context, (0, 1, 2), (3, 4, 6), PerSampleRNG.for_indices(0, range(6)))
    assert torch.equal(context, before) and torch.equal(recon, before)
    assert pred.shape == (6, 3, 1, 1, 1) and torch.isfinite(pred).all()
    # the first predicted frame comes from a sampler conditioned on the last context frame only
    again = fam.rollout("predict", before[:, 2:], 4, PerSampleRNG.for_indices(0, range(6)), DDIM(steps=20))
    assert torch.allclose(pred, again[:, [0, 1, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="consecutive"):
        fam.reconstruct_and_predict(context, (0, 2, 4), (5,), None)


@pytest.mark.parametrize("task", ["past", "interpolate", "generate"])
def test_reconstruct_and_predict_does_every_task_by_its_indices(task):
    """The video metric's tasks reach MCVD through the frame indices alone (bench_metrics/video.py):
    targets before the context (past), between a past and a future run (interpolate), or no context
    (generate); the samples have the closed-form conditional of each task."""
    fam = exact_family(1, 2, 1)
    fam.video_sampler = Ancestral(steps=200)
    assert task in fam.video_tasks
    rng = PerSampleRNG.for_indices(2, range(N))
    if task == "past":
        ci, ti, values = (3,), (1, 2), [-0.5]
    elif task == "interpolate":
        ci, ti, values = (0, 3), (1, 2), [1.6, -0.2]
    else:
        ci, ti, values = (), (0, 1), []
    context = torch.tensor(values).view(1, len(ci), 1, 1, 1).expand(N, len(ci), 1, 1, 1).contiguous()
    recon, pred = fam.reconstruct_and_predict(context, ci, ti, rng)
    assert torch.equal(recon, context) and pred.shape == (N, 2, 1, 1, 1)
    mean, cov = conditional(4 if ci else 2, list(ci), values, list(ti))
    check_gaussian(pred, mean, cov, N)


def test_video_tasks_follow_the_future_block():
    assert make_family(1, 2, 0, "past").video_tasks == ("predict", "generate")
    assert set(make_family(1, 2, 1, "past_future").video_tasks) == {"predict", "generate", "past", "interpolate"}
    fam = exact_family(1, 2, 1)
    fam.video_sampler = DDIM(steps=5)
    with pytest.raises(ValueError, match="horizon = current = 2"):  # a 3-frame gap is not one block of k = 2
        fam.reconstruct_and_predict(torch.zeros(2, 2, 1, 1, 1), (0, 4), (1, 2, 3), PerSampleRNG.for_indices(0, range(2)))
    with pytest.raises(ValueError, match="none of its tasks"):  # targets on both sides of the context
        fam.reconstruct_and_predict(torch.zeros(2, 1, 1, 1, 1), (2,), (1, 3), PerSampleRNG.for_indices(0, range(2)))


# ---------------------------------------------------------------- built through the registries

@pytest.fixture(scope="module")
def tiny_digits():
    return dataset("moving_digits", size=16, digit_size=8, frames=8, n_train=8, n_test=2)


@pytest.mark.parametrize("cond,net_cls", [("concat", "SmallUNet"), ("spatin", "SpatinUNet")])
def test_registry_build_trains_and_feeds_the_video_metric(tiny_digits, cond, net_cls):
    torch.manual_seed(0)
    fam = build("family", {"name": "mcvd", "cond": cond, "mask": "past_future", "past": 2, "current": 2,
                           "future": 1, "T": 50, "network": {"base": 8},
                           "video_sampler": {"name": "ddim", "steps": 2}}, tiny_digits)
    assert type(fam.net).__name__ == net_cls and fam.shape == (2, 1, 16, 16)
    assert {"video_predict", "vp"} <= fam.provides and "likelihood" not in fam.provides
    loss = fam.loss(tiny_digits.split("train"), BatchRNG(0, 8))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in fam.net.parameters())
    # the conditioning reaches the output (spatin: once its zero-initialised scale/shift is not zero)
    for mod in fam.net.modules():
        if type(mod).__name__ == "SpatialNorm":
            nn.init.normal_(mod.gamma_beta.weight, std=0.1)
    nn.init.normal_(fam.net.out.weight, std=0.1)
    x, t = torch.randn(2, 2, 1, 16, 16), 0.5
    past = tiny_digits.split("test")[:, :2]
    with torch.no_grad():
        assert not torch.allclose(fam.denoiser(past, None).eps(x, t), fam.denoiser(None, None, batch=2).eps(x, t))
        assert torch.equal(fam.denoiser(None, None, batch=2).eps(x, t), fam.eps(x, t))  # the family = unconditional
    out = VideoMetrics(context_frames=2, horizon=4, num_videos=2).compute(metric_context(tiny_digits, family=fam))
    assert out["recon_mse"] == 0.0 and {"extrap_ssim", "extrap_psnr", "pred_mse_t6"} <= set(out)

def tiny_suite(tmp_path: Path, family: str) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""name: tiny-mcvd
seed: 0
defaults:
  train: {{steps: 2, batch_size: 4, lr: 1.0e-3}}
  eval: {{num_samples: 2, batch_size: 2, grid: 0}}
matrix:
  dataset:
    - {{name: moving_digits, size: 16, digit_size: 8, frames: 8, n_train: 8, n_test: 2}}
  family:
    - {family}
  sampler:
    - {{name: ddim, steps: 2}}
metrics:
  - {{name: video, context_frames: 2, horizon: 4, num_videos: 2}}
""")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("cond,mask", [("concat", "past"), ("spatin", "past_future")])
def test_bench_run_tiny_mcvd(workdir, cond, mask):
    from bench.cli import app

    fam = (f"{{name: mcvd, cond: {cond}, mask: {mask}, past: 2, current: 2, future: 1, T: 50, "
           f"network: {{base: 8}}, video_sampler: {{name: ddim, steps: 2}}}}")
    result = CliRunner().invoke(app, ["run", str(tiny_suite(workdir, fam)), "-q", "--threads", "1"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    assert result.exit_code == 0 and [r["status"] for r in records] == ["ok"], result.output[-2000:]
    m = records[0]["metrics"]
    assert m["recon_mse"] == 0.0 and m["recon_ssim"] == pytest.approx(1.0)  # the context itself
    assert {"extrap_ssim", "extrap_psnr", "pred_mse_t6", "nfe"} <= set(m) and m["nfe"] == 2


def test_gff_noise_acts_on_the_target_block(tiny_digits):
    """GFF noise over the k current frames (each frame's spatial field filtered separately)."""
    fam = build("family", {"name": "mcvd", "past": 2, "current": 3, "T": 50, "noise": {"name": "gff", "gamma": 1.5},
                           "network": {"base": 8}, "video_sampler": {"name": "ancestral", "steps": 2}}, tiny_digits)
    assert fam.noise.name == "gff" and fam.noise.shape == (3, 1, 16, 16) and fam.noise.n_fields == 3
    assert torch.isfinite(fam.loss(tiny_digits.split("train"), BatchRNG(0, 8)))
    pred = fam.rollout("predict", tiny_digits.split("test")[:, :2], 4, PerSampleRNG.for_indices(0, range(2)))
    assert pred.shape == (2, 4, 1, 16, 16) and torch.isfinite(pred).all()


def test_space_time_gff_noise_is_one_field_over_the_target_frames(tiny_digits):
    """GFF over space-time (issue: "GFF over space-time"): one 3-D field over the k current frames."""
    fam = build("family", {"name": "mcvd", "past": 2, "current": 3, "T": 50,
                           "noise": {"name": "gff", "gamma": 1.5, "field": "space_time"},
                           "network": {"base": 8}, "video_sampler": {"name": "ddim", "steps": 2}}, tiny_digits)
    assert fam.noise.n_fields == 1 and fam.noise.field == (3, 16, 16)
    eps = fam.noise.sample(BatchRNG(0, 4000)).double()
    corr = float(((eps[:, 0] * eps[:, 1]).mean()))  # the same pixel in consecutive frames
    assert corr > 0.1, corr
    assert torch.isfinite(fam.loss(tiny_digits.split("train"), BatchRNG(0, 8)))
    pred = fam.rollout("predict", tiny_digits.split("test")[:, :2], 4, PerSampleRNG.for_indices(0, range(2)))
    assert pred.shape == (2, 4, 1, 16, 16) and torch.isfinite(pred).all()


def test_bad_mcvd_parameters_exit_2(workdir):
    from bench.cli import app

    result = CliRunner().invoke(app, ["run", str(tiny_suite(workdir, "{name: mcvd, mask: sometimes}")), "-q"])
    assert result.exit_code == 2 and "mask" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_video_suite_end_to_end(workdir):
    """suites/video.yaml at reduced size with all its tasks: every family does the tasks it lists and
    skips the others with the reason."""
    from bench.cli import app

    small = "num_videos: 4, trajectories: 2"
    result = CliRunner().invoke(app, [
        "run", str(ROOT / "suites" / "video.yaml"), "-q", "--threads", "1", "--set", "train.steps=2",
        "--set", "matrix.dataset=[{name: moving_digits, n_train: 16, n_test: 4}]",
        "--set", f"metrics=[{{name: video, context_frames: 5, horizon: 10, {small}}}, "
                 f"{{name: video, id: vi, task: interpolate, context_frames: 5, future_frames: 2, horizon: 5, {small}}}, "
                 f"{{name: video, id: vp, task: past, context_frames: 5, horizon: 5, {small}}}]"])
    records = {json.loads(p.read_text())["labels"]["family"]: json.loads(p.read_text())
               for p in Path("results").rglob("record.json")}
    assert result.exit_code == 0, result.output
    assert len(records) == 5 and all(r["status"] == "ok" for r in records.values())
    assert all("extrap_ssim" in r["metrics"] and "pred_psnr_t15" in r["metrics"] for r in records.values())
    for fam, r in records.items():
        pf, lode = fam.endswith("_pf"), fam.startswith("latent_ode")
        assert ("interpolate_ssim_best" in r["metrics"]) == (pf or lode), fam
        assert ("past_ssim" in r["metrics"]) == pf, fam
        assert ("vp" in r["skipped_metrics"]) == (not pf), fam
    # docs/results.md section 7's tables come from this script on such a run
    import subprocess
    import sys
    run_dir = next(Path("results").glob("video/*"))
    table = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "video_table.py"), str(run_dir)],
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    for heading in ("Prediction, 5 -> 10", "Interpolation", "Past prediction", "Paired differences"):
        assert heading in table.stdout
    assert "| mcvd_spatin_pf |" in table.stdout and "| last context frame repeated |" in table.stdout
    diag = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "mcvd_diagnose.py"), str(run_dir),
                           ".bench-store"], capture_output=True, text=True, timeout=300)
    assert diag.returncode == 0, diag.stderr
    assert diag.stdout.count("| mcvd_") == 4 and "no checkpoint" not in diag.stdout and "blank frame" in diag.stdout
