"""``fvd`` and its video feature extractors: the Frechet distance against scipy's closed form, the
metric's floor (0 for identical sets, small and positive for real vs real), the locally trained
``moving-digits-classifier`` (deterministic, cached, above chance; FVD grows for time-shuffled and
blurred clips) and ``i3d`` with a user's TorchScript file (its state-dict path: tests/test_i3d.py)."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from bench.context import MetricSkipped
from bench.errors import UserError
from bench_data.moving_digits import DIRECTIONS, MovingDigits
from bench_metrics.fvd import FVD, frechet_distance
from bench_metrics.testing import build_context, metric_context
from bench_metrics.video_extractors import I3D, I3D_ENV, MovingDigitsClassifier

SMALL = dict(frames=8, size=16, digit_size=8, max_speed=2, n_train=160, n_test=48)
FAST = dict(width=4, feature_dim=16, epochs=2, batch_size=16)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) with numpy's covariance and scipy's sqrtm."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * root))


def test_frechet_distance_matches_the_closed_form_and_is_zero_for_a_set_with_itself():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    b = 0.5 + torch.randn(200, 6, generator=gen, dtype=torch.float64) @ torch.diag(torch.linspace(0.5, 2, 6,
                                                                                                  dtype=torch.float64))
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a.numpy(), b.numpy()), rel=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
    # exact: a shifted copy is |c|^2 away (same covariance); a scaled copy 2a is |m_a|^2 + tr S_a away
    c = torch.linspace(-1, 1, 6, dtype=torch.float64)
    assert frechet_distance(a, a + c) == pytest.approx(float((c ** 2).sum()), rel=1e-6)
    expected = float((a.mean(0) ** 2).sum() + torch.cov(a.T).trace())
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def small():
    return MovingDigits(**SMALL)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


def test_moving_digits_labels_match_the_generation(small):
    assert small.digit_labels("train").shape == (160, 1) and small.direction_labels("test").shape == (48, 1)
    tracks = small.tracks("train")[:, 0]  # (N, T, 2)
    step = np.sign(tracks[:, 1] - tracks[:, 0])  # the first velocity's signs, when the first step cannot bounce:
    speed = SMALL["max_speed"]
    unbounced = ((tracks[:, 0] >= speed) & (tracks[:, 0] <= small.limit - speed)).all(1)
    labels = small.direction_labels("train")[:, 0].numpy()
    assert unbounced.sum() > 20
    assert all(tuple(step[i]) == DIRECTIONS[labels[i]] for i in np.flatnonzero(unbounced))
    assert len(set(small.digit_labels("train")[:, 0].tolist())) == 10


def test_two_digit_clips_train_towards_the_uniform_distribution_over_their_labels():
    from bench_metrics.video_classifier import label_distribution
    q = label_distribution(torch.tensor([[3, 3], [1, 2], [7, 7]]), 10)
    assert torch.equal(q[0], F.one_hot(torch.tensor(3), 10).float())
    assert q[1, 1] == q[1, 2] == 0.5 and q[1].sum() == 1 and q[2, 7] == 1


def test_the_classifier_is_deterministic_cached_and_labelled(small, store, tmp_path):
    said = []
    ext = MovingDigitsClassifier(**FAST, context=build_context(small, store, log=said.append))
    ext.prepare()
    assert any("trained" in s for s in said) and ext.metrics()["extractor_train_s"] > 0
    again = MovingDigitsClassifier(**FAST, context=build_context(small, store))
    again.prepare()
    assert "extractor_train_s" not in again.metrics()  # loaded from the store
    fresh = MovingDigitsClassifier(**FAST, context=build_context(small, tmp_path))
    fresh.prepare()  # trained again in an empty store: the same weights
    for (k, v), w in zip(ext.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert not ext.comparable_with_published and "NOT comparable" in ext.describe()["note"]
    clips = small.split("test")[:5]
    assert ext.features(clips).shape == (5, 16) and ext.features(clips).dtype == torch.float64


def test_the_classifier_needs_moving_digits_labels(store):
    from test_video_trajectories import Blobs
    with pytest.raises(UserError, match="digit_labels"):
        MovingDigitsClassifier(context=build_context(Blobs(), store))


class Oracle(nn.Module):
    """Returns the true target frames (it looks them up by the context): a perfect predictor."""

    def __init__(self, dataset):
        super().__init__()
        self.videos = dataset.split("test")

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        ci = list(context_index)
        rows = [int(((self.videos[:, ci] - c).abs().flatten(1).sum(1) == 0).nonzero()[0]) for c in context]
        return context, self.videos[rows][:, list(target_index)]


class CopyLast(nn.Module):
    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        return context, context[:, -1:].expand(-1, len(target_index), -1, -1, -1)


def fvd(dataset, family, store, **kw):
    ctx = metric_context(dataset, family=family, store=store)
    metric = FVD(extractor={"name": "moving-digits-classifier", **FAST}, context_frames=3, num_videos=None,
                 bootstrap=50, context=ctx.build_context, **kw)
    return metric.compute(ctx)


def test_fvd_of_a_perfect_predictor_is_its_floor_and_copy_last_is_above(small, store):
    perfect = fvd(small, Oracle(small), store)
    assert perfect["fvd"] == perfect["fvd_floor"] > 0  # real test clips vs the train reference
    assert perfect["fvd_ci_lo"] < perfect["fvd"] < perfect["fvd_ci_hi"] and perfect["fvd_boot_n"] == 50
    assert perfect["fvd_num_videos"] == 48 and perfect["fvd_ref_num_samples"] == 160
    assert perfect["fvd_published_comparable"] == 0 and perfect["fvd_ref_cached"] == 0
    copy = fvd(small, CopyLast(), store)
    assert copy["fvd_ref_cached"] == 1 and copy["fvd_floor"] == perfect["fvd_floor"]
    assert copy["fvd"] > 2 * copy["fvd_floor"]


def test_fvd_over_trajectories_of_a_deterministic_family_is_the_single_value(small, store):
    one, three = fvd(small, CopyLast(), store), fvd(small, CopyLast(), store, trajectories=3)
    assert three["fvd_trajectories"] == 3 and three["fvd_traj_sd"] == 0
    for key in ("fvd", "fvd_floor", "fvd_ci_lo", "fvd_ci_hi"):
        assert three[key] == pytest.approx(one[key], rel=1e-12), key


class ReplayGenerator(nn.Module):
    """Generates, with no context, the true clips of the test split in order (the video metric asks
    for the fixed subset, here all test clips): a perfect generator of those clips."""

    video_tasks = ("predict", "generate")

    def __init__(self, dataset):
        super().__init__()
        self.videos, self.next = dataset.split("test"), 0

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        assert context.shape[1] == 0 and list(context_index) == []
        rows = range(self.next, self.next + len(context))
        self.next += len(context)
        return context, self.videos[list(rows)][:, list(target_index)]


def test_fvd_generate_task_has_its_own_keys_and_a_perfect_generator_is_at_its_floor(small, store):
    out = fvd(small, ReplayGenerator(small), store, task="generate", horizon=6)
    assert out["fvd_generate"] == out["fvd_generate_floor"] > 0 and "fvd" not in out
    assert out["fvd_generate_num_videos"] == 48
    with pytest.raises(MetricSkipped, match="generate"):
        fvd(small, CopyLast(), store, task="generate", horizon=6)
    with pytest.raises(UserError, match="source: predict"):
        FVD(extractor={"name": "moving-digits-classifier", **FAST}, source="samples", task="generate",
            context=metric_context(small, store=store).build_context)


def test_fvd_of_samples_against_the_reference(small, store):
    ctx = metric_context(small, samples=small.split("test")[:40], store=store)
    out = FVD(extractor={"name": "moving-digits-classifier", **FAST}, source="samples", bootstrap=0,
              context=ctx.build_context).compute(ctx)
    # samples = 40 real test clips, reference = train (the extractor's split), floor = 40 test clips
    assert out["fvd_ref_num_samples"] == 160 and out["fvd_floor_num_samples"] == out["fvd_num_videos"] == 40
    assert 0 < out["fvd"] and out["fvd_floor"] > 0 and "fvd_ci_lo" not in out


def test_fvd_rejects_image_extractors(store):
    from bench_diffusion.testing import dataset
    ctx = metric_context(dataset("digits8"), store=store)
    with pytest.raises(UserError, match="fvd needs a video feature extractor"):
        FVD(extractor="random-proj", context=ctx.build_context)


# ------------------------------------------------------------------------------------------------ i3d
class TinyVideoNet(nn.Module):
    """A stand-in with the standard FVD I3D signature: mean-pooled (N, 3, T, H, W) -> (N, 3 T)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        return x.mean(dim=(3, 4)).flatten(1)


class PlainVideoNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3, 4))


def test_i3d_loads_a_user_torchscript_file_logs_its_sha256_and_feeds_fvd(small, store, tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    torch.jit.script(TinyVideoNet()).save(str(path))
    monkeypatch.setenv(I3D_ENV, str(path))
    ext = I3D(context=build_context(small, store))
    clips = small.split("test")[:4]
    feats = ext.features(clips)
    u8 = torch.round((clips + 1) * 127.5)  # what the network sees: the uint8 frames back in [-1, 1]
    expected = (u8 / 127.5 - 1).mean(dim=(3, 4)).expand(-1, -1, 3).permute(0, 2, 1).flatten(1)
    torch.testing.assert_close(feats, expected.to(torch.float64), rtol=1e-6, atol=1e-6)
    desc = ext.describe()
    assert desc["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and desc["call"] == "stylegan-v"
    assert ext.comparable_with_published
    plain = tmp_path / "plain.pt"
    torch.jit.script(PlainVideoNet()).save(str(plain))
    other = I3D(path=str(plain), context=build_context(small, store))
    assert other.features(clips).shape == (4, 3) and not other.comparable_with_published
    ctx = metric_context(small, family=CopyLast(), store=store)
    out = FVD(extractor="i3d", context_frames=3, num_videos=None, bootstrap=0, context=ctx.build_context).compute(ctx)
    assert out["fvd"] > out["fvd_floor"] > 0 and out["fvd_published_comparable"] == 1


def test_i3d_errors_are_one_clear_line(small, store, tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_ENV, raising=False)
    with pytest.raises(UserError, match="BENCH_I3D_WEIGHTS"):
        I3D(context=build_context(small, store))
    with pytest.raises(UserError, match="not found"):
        I3D(path=str(tmp_path / "missing.pt"), context=build_context(small, store))
    state = tmp_path / "state.pt"
    torch.save(TinyVideoNet().state_dict(), state)
    with pytest.raises(UserError, match="not a pytorch-i3d InceptionI3d state dict: missing"):
        I3D(path=str(state), context=build_context(small, store)).prepare()


# ------------------------------------------------------------------------------------------------ slow
def shuffled(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    perm = torch.randperm(clips.shape[1], generator=torch.Generator().manual_seed(seed))
    return clips[:, perm]


def blurred(clips: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4, 6, 4, 1])
    k = (k[:, None] * k[None, :] / 256)[None, None]
    n, t = clips.shape[:2]
    x = F.conv2d(F.pad(clips.reshape(n * t, 1, *clips.shape[-2:]), (2, 2, 2, 2), mode="replicate"), k)
    return x.reshape(clips.shape)


@pytest.mark.slow
def test_the_default_classifier_is_well_above_chance_and_fvd_sees_shuffles_and_blur(tmp_path):
    data = MovingDigits(n_train=1000, n_test=200)
    ext = MovingDigitsClassifier(context=build_context(data, tmp_path))
    ext.prepare()
    acc = ext.metrics()
    assert acc["extractor_test_digit_accuracy"] > 0.5 and acc["extractor_test_direction_accuracy"] > 0.5
    ref, test = ext.features(data.split("train")), data.split("test")
    floor = frechet_distance(ext.features(test), ref)
    assert abs(frechet_distance(ext.features(test), ext.features(test))) < 1e-6
    assert 0 < floor < frechet_distance(ext.features(shuffled(test)), ref) / 3
    assert floor < frechet_distance(ext.features(blurred(test)), ref) / 3


@pytest.mark.slow
def test_video_suite_with_fvd_end_to_end(workdir):
    """suites/video.yaml at reduced size (its header's second command): video and fvd over 2 trajectories."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from bench.cli import app

    frames = "context_frames: 5, horizon: 10, num_videos: 4, trajectories: 2"
    result = CliRunner().invoke(app, [
        "run", str(Path(__file__).resolve().parents[1] / "suites" / "video.yaml"), "-q", "--threads", "1",
        "--set", "train.steps=2", "--set", "matrix.dataset=[{name: moving_digits, n_train: 16, n_test: 4}]",
        "--set", f"metrics=[{{name: video, {frames}}}, {{name: fvd, {frames}, "
                 "extractor: {name: moving-digits-classifier, epochs: 1}}]"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    assert result.exit_code == 0, result.output
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)
    for r in records:
        m = r["metrics"]
        assert m["fvd_trajectories"] == 2 and m["fvd_floor"] > 0 and m["fvd_published_comparable"] == 0
        assert m["pred_ssim_best"] >= m["pred_ssim"] and m["video_trajectories"] == 2
