"""The latent ODE's pieces (plugins/bench_flows/latent_ode.py): pixel likelihoods against closed forms
and torch's own implementations, the encoders (shapes, z_0 depends on the input and, for the
multi-frame encoders, on the motion), the training frames, KL annealing, and the thesis's original
deterministic loss (eq. 3.4.1) recomputed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from bench.rng import BatchRNG
from bench_data.moving_digits import MovingDigits
from bench_flows.latent_ode import LatentODE, bernoulli_nll, gaussian_nll

SMALL = dict(latent_dim=6, channels=[4, 8], ode_hidden=[16], rnn_hidden=12, step_size=0.1)


@pytest.fixture(scope="module")
def data():
    return MovingDigits(num_digits=1, n_train=8, n_test=4, data_seed=5)


class Ctx:
    def __init__(self, ds):
        self.data = ds.info


def make(data, **kw):
    torch.manual_seed(0)
    return LatentODE(context=Ctx(data), **{**SMALL, **kw})


def test_bernoulli_nll_closed_form_and_torch():
    d = torch.linspace(-6, 6, 25, dtype=torch.float64)
    # binary pixels: x = -1 (u = 0) -> -log(1 - sigma(d)); x = 1 (u = 1) -> -log sigma(d)
    torch.testing.assert_close(bernoulli_nll(d, -torch.ones_like(d)), -torch.log(1 - torch.sigmoid(d)))
    torch.testing.assert_close(bernoulli_nll(d, torch.ones_like(d)), -torch.log(torch.sigmoid(d)))
    # grey targets: torch's binary cross-entropy with logits (an independent implementation)
    x = torch.rand(25, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(bernoulli_nll(d, x),
                               F.binary_cross_entropy_with_logits(d, (x + 1) / 2, reduction="none"))
    # minimised at sigma(d) = u: the zero of the derivative sigma(d) - u
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    best = torch.logit(u).requires_grad_()
    bernoulli_nll(best, 2 * u - 1).sum().backward()
    torch.testing.assert_close(best.grad, torch.zeros_like(u), atol=1e-12, rtol=0)
    # stable far out: no inf/nan at |d| = 100
    assert torch.isfinite(bernoulli_nll(torch.tensor([-100.0, 100.0]), torch.tensor([1.0, -1.0]))).all()


def test_gaussian_nll_is_normal_log_prob():
    m, x = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    torch.testing.assert_close(gaussian_nll(m, x, 0.3), -torch.distributions.Normal(m, 0.3).log_prob(x))


@pytest.mark.parametrize("variant", ["deterministic", "vae"])
@pytest.mark.parametrize("encoder", ["frame", "stack", "gru"])
def test_encoders_shapes_and_z0_depends_on_the_input(data, variant, encoder):
    fam = make(data, variant=variant, encoder=encoder)
    v = data.split("train")[:3, fam.context_index]
    mu, logvar, per_frame = fam.encode(v)
    assert mu.shape == (3, 6)
    assert (logvar is None) == (variant == "deterministic")
    if logvar is not None:
        assert logvar.shape == (3, 6)
    assert (per_frame is not None) == (variant == "deterministic" and encoder == "frame")
    assert (mu[0] - mu[1]).abs().max() > 1e-4  # different videos, different z_0
    # the motion: the same first frame with later frames changed moves z_0 only for multi-frame encoders
    moved = v.clone()
    moved[:, 1:] = v[:, 1:].roll(1, dims=0)
    changed = (fam.encode(moved)[0] - mu).abs().max()
    if encoder == "frame":
        assert changed == 0
    else:
        assert changed > 1e-4


def test_stack_encoder_reads_encoder_frames_only(data):
    fam = make(data, encoder="stack", encoder_frames=3)
    assert fam.encoder_frames == 3 and fam.encoder.convs[0].in_channels == 3
    v = data.split("train")[:2, fam.context_index]
    later = v.clone()
    later[:, 3:] = -1
    torch.testing.assert_close(fam.encode(later)[0], fam.encode(v)[0])
    with pytest.raises(ValueError, match="exceeds"):
        make(data, encoder="stack", encoder_frames=11)


def test_latent_term_needs_per_frame_encoder(data):
    with pytest.raises(ValueError, match="latent_weight"):
        make(data, variant="deterministic", encoder="stack", latent_weight=1.0)
    with pytest.raises(ValueError, match="latent_weight"):
        make(data, variant="vae", latent_weight=1.0)


def test_thesis_deterministic_loss_by_hand(data):
    """encoder frame, gaussian, context-only training, latent_weight w: eq. 3.4.1 (per-element means)."""
    fam = make(data, variant="deterministic", encoder="frame", likelihood="gaussian", train_frames="context",
               latent_weight=0.7)
    x = data.split("train")[:2]
    c = x[:, :10]
    enc = torch.stack([fam.encoder(c[:, i]) for i in range(10)], 1)
    t = torch.arange(10, dtype=torch.float32) * 0.1
    z = [enc[:, 0]]
    for k in range(9):  # RK4, step 0.1 = the frame spacing
        f = fam.dynamics
        z0, s = z[-1], t[k]
        k1 = f(s, z0)
        k2 = f(s + 0.05, z0 + 0.05 * k1)
        k3 = f(s + 0.05, z0 + 0.05 * k2)
        k4 = f(s + 0.1, z0 + 0.1 * k3)
        z.append(z0 + 0.1 / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    zs = torch.stack(z, 1)
    recon = fam.decoder(zs.flatten(0, 1)).view_as(c)
    want = (recon - c).pow(2).mean() + 0.7 * (enc - zs).pow(2).mean()
    torch.testing.assert_close(fam.loss(x, BatchRNG(0, 2)), want, rtol=1e-5, atol=1e-6)


def test_train_frames_all_fits_the_targets_context_does_not(data):
    x = data.split("train")[:2]
    y = x.clone()
    y[:, 15] = x[:, 15].flip(-1)  # change one frame after the context
    for train_frames, moves in (("context", False), ("all", True)):
        fam = make(data, variant="deterministic", encoder="stack", train_frames=train_frames)
        a, b = fam.loss(x, BatchRNG(0, 2)), fam.loss(y, BatchRNG(0, 2))
        assert (a != b) == moves


def test_vae_loss_is_the_elbo_and_kl_is_annealed(data):
    fam = make(data, variant="vae", encoder="stack", kl_weight=2.0, kl_warmup=4)
    x = data.split("train")[:2]
    assert fam.kl_scale() == 0.0
    rng = BatchRNG(3, 2)
    fam.loss(x, rng)
    fam.loss(x, rng)
    assert fam.kl_scale() == pytest.approx(1.0)  # 2 of 4 warm-up steps
    # recompute the negative ELBO per pixel by hand from the same noise
    mu, logvar, _ = fam.encode(x[:, :10])
    eps = BatchRNG(3, 2).randn(6)
    z0 = mu + (0.5 * logvar).exp() * eps
    out = fam.decode(fam.latent_path(z0, 0.0, fam.times(list(range(20)))))
    u = (x + 1) / 2
    nll = -(u * torch.log(torch.sigmoid(out)) + (1 - u) * torch.log(1 - torch.sigmoid(out))).flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    want = ((nll + 1.0 * kl) / x[0].numel()).mean()
    torch.testing.assert_close(fam.loss(x, BatchRNG(3, 2)), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        fam.loss(x, rng)  # no gradient: not a training step
    assert fam.kl_scale() == pytest.approx(1.5)  # the hand-check's call counted, the no-grad one not
    for _ in range(5):
        fam.loss(x, rng)
    assert fam.kl_scale() == 2.0  # capped at kl_weight


def test_bernoulli_predictions_are_the_mean_in_model_space(data):
    fam = make(data, variant="deterministic", encoder="stack")
    v = data.split("test")[:2]
    recon, pred = fam.reconstruct_and_predict(v[:, :10], range(10), range(10, 20))
    mu, _, _ = fam.encode(v[:, :10])
    out = fam.decode(fam.latent_path(mu, 0.0, fam.times(list(range(20)))))
    torch.testing.assert_close(torch.cat([recon, pred], 1), 2 * torch.sigmoid(out) - 1)
    assert pred.min() > -1 and pred.max() < 1
    assert math.isclose(float(fam.frames_of(torch.tensor(0.0))), 0.0)


# ---------------------------------------------------------------- docs/scripts/latent_ode_curves.py
TINY_SUITE = """
name: lode-curves-tiny
seed: 0
defaults:
  train: {steps: 4, batch_size: 4, lr: 3.0e-3, ema: 0.9, grad_clip: 100.0, warmup: 2, log_every: 2}
  eval: {num_samples: 6, batch_size: 6, grid: 0}
matrix:
  dataset:
    - {name: moving_digits, num_digits: 1, n_train: 8, n_test: 6, id: md}
  family:
    - {name: latent_ode, id: lode, latent_dim: 4, channels: [4, 4, 4], ode_hidden: [8], solver: euler,
       step_size: 0.1}
  sampler:
    - null
metrics:
  - {name: video, num_videos: 6}
"""


def curves_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "latent_ode_curves.py"
    spec = importlib.util.spec_from_file_location("latent_ode_curves", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curves_script_writes_both_weight_sets_every_n_steps(tmp_path):
    import csv
    import json

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    curves_script().main([str(suite), "--every", "3", "--videos", "6", "--out", str(tmp_path / "c")])
    result = json.loads((tmp_path / "c.json").read_text())
    # every 3 steps and after the last (4), raw and EMA weights each
    assert [(r["step"], r["weights"]) for r in result["rows"]] == [(3, "raw"), (3, "ema"), (4, "raw"), (4, "ema")]
    assert all(0 < r["extrap_mse"] < 1 and -1 <= r["extrap_ssim"] <= 1 for r in result["rows"])
    assert result["rows"][-1]["extrap_ssim"] != result["rows"][-2]["extrap_ssim"]  # EMA 0.9 lags the raw weights
    assert 0.5 < result["blank_frame"]["extrap_ssim"] < 1  # a black frame on mostly black videos
    assert len(list(csv.DictReader((tmp_path / "c.csv").open()))) == 4
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c_frames.png").stat().st_size > 1000
    assert "frames" not in result


def test_curves_script_bad_suite_is_one_line_and_exit_2(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    with pytest.raises(SystemExit) as exc:
        curves_script().main([str(suite), "--case", "nope", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "no case 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_curves_script_final_weights_are_those_of_bench_run(tmp_path):
    """The script trains the case as `bench run` does: its last EMA evaluation equals the run's metric."""
    import json

    from bench.plugins import get_manager
    from bench.session import RunOptions, run_suite
    from bench.suite import load_suite

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    script = curves_script()
    result = script.run(suite, None, [], 2, 6, None)
    m = get_manager()
    code = run_suite(load_suite(suite, m.registries, m.versions()), m,
                     RunOptions(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", results_root=str(tmp_path / "res"),
                                store=str(tmp_path / "store"), quiet=True))
    record = json.loads(next((tmp_path / "res").glob("*/*/cases/*/record.json")).read_text())
    assert code == 0 and record["status"] == "ok", record.get("error")
    last = result["rows"][-1]
    assert last["weights"] == "ema" and last["step"] == 4
    for key in script.KEYS:
        assert last[key] == record["metrics"][key], key


@pytest.mark.slow
def test_vae_with_stacked_encoder_escapes_the_posterior_collapse():
    """docs/results.md section 5: the GRU-encoder VAE's posterior mean hardly depends on the video early
    in training; with ``encoder: stack`` it spreads across test videos within 100 steps (tiny size)."""
    data = MovingDigits(num_digits=1, size=16, digit_size=8, max_speed=2, n_train=200, n_test=32, data_seed=0)
    train, test = data.split("train"), data.split("test")
    spread = {}
    for encoder in ("gru", "stack"):
        torch.manual_seed(0)
        fam = LatentODE(variant="vae", encoder=encoder, likelihood="bernoulli", train_frames="all", latent_dim=8,
                        channels=[8, 16], ode_hidden=[32], rnn_hidden=32, step_size=0.1, context=Ctx(data))
        opt = torch.optim.Adam(fam.parameters(), 3e-3)
        g = torch.Generator().manual_seed(0)
        for step in range(100):
            loss = fam.loss(train[torch.randint(0, len(train), (32,), generator=g)], BatchRNG(step, 32))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mu, _, _ = fam.encode(test[:, :10])
        spread[encoder] = float(mu.std(0).mean())  # across videos, averaged over the latent dimensions
    assert spread["gru"] < 0.1 < 0.5 < spread["stack"], spread
