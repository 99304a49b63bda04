"""Inception Score: the formula against a hand computation, the metric against a direct
``torch_fidelity.calculate_metrics(isc=True)`` call on an InceptionV3 built from a local state dict
(random weights of the right structure: the plumbing, not a real IS), and the skips."""
import socket

import numpy as np
import pytest
import torch
import torch_fidelity

from bench.context import MetricSkipped
from bench.errors import UserError
from bench.protocols import DataInfo
from bench_metrics.extractors import FidelityExtractor, to_uint8_rgb
from bench_metrics.fidelity import ImageTensorDataset
from bench_metrics.inception_score import InceptionScore, inception_score
from bench_metrics.testing import metric_context, registries
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    return tmp_path


class Images:
    def __init__(self, shape=(3, 8, 8), n=12, modality="image", seed=0):
        g = torch.Generator().manual_seed(seed)
        self.info = DataInfo("rand-images", shape, modality, levels=256 if modality == "image" else None,
                             value_range=(-1.0, 1.0))
        self._s = {s: torch.rand(n, *shape, generator=g) * 2 - 1 for s in ("train", "test")}

    def split(self, name):
        return self._s[name]


def hand_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """exp(mean_x KL(p(y|x) || p(y))) per consecutive part, p(y) the part's mean of p(y|x)."""
    scores = []
    n = len(logits)
    for i in range(splits):
        z = logits[i * n // splits:(i + 1) * n // splits].astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        kl = (p * (np.log(p) - np.log(py))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_formula_against_a_hand_computation():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(40, 7))
    for splits in (1, 4):
        mean, std = inception_score(torch.tensor(logits, dtype=torch.float32), splits, shuffle=False)
        want = hand_is(logits.astype(np.float32), splits)
        assert mean == pytest.approx(want[0], rel=1e-9) and std == pytest.approx(want[1], rel=1e-7, abs=1e-12)
    # closed forms: identical rows give IS = 1; K confident, equally frequent classes give IS -> K
    assert inception_score(torch.zeros(10, 5).add_(torch.arange(5.0)), 1, shuffle=False)[0] == pytest.approx(1.0)
    confident = 50.0 * torch.eye(5).repeat(4, 1)
    assert inception_score(confident, 1, shuffle=False)[0] == pytest.approx(5.0, rel=1e-9)


# ------------------------------------------------------------------ wiring, with a stand-in classifier
STANDIN_W = torch.randn(7, 3 * 8 * 8, generator=torch.Generator().manual_seed(3)) / 4


class LinearLogits(FeatureExtractorBase):
    """torch-fidelity side of the stand-in: logits = W (u / 127.5 - 1) on uint8 RGB 8x8 images."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("logits",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        return ((x.float() / 127.5 - 1).flatten(1) @ STANDIN_W.T,)


class StandIn(FidelityExtractor):
    name = fidelity_name = "test-linear-logits"
    feature_layer = "logits"


@pytest.fixture
def standin():
    if "test-linear-logits" not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor("test-linear-logits", LinearLogits)
    regs = registries().feature_extractor
    if "test-linear-logits" not in regs:
        regs.register("test-linear-logits", StandIn, plugin="tests")
    return "test-linear-logits"


def test_metric_wiring_with_a_stand_in_classifier(tmp_path, standin):
    data, gen = Images(n=30), Images(n=30, seed=5).split("test")
    ctx = metric_context(data, gen, store=tmp_path)
    out = InceptionScore(extractor=standin, splits=3, shuffle=False, context=ctx.build_context).compute(ctx)
    u8 = to_uint8_rgb(gen, 256)  # the metric sees uint8 RGB images
    logits = ((u8.float() / 127.5 - 1).flatten(1) @ STANDIN_W.T).numpy()
    want = hand_is(logits, 3)
    assert out["is_mean"] == pytest.approx(want[0], rel=1e-6) and out["is_std"] == pytest.approx(want[1], rel=1e-4)
    real = hand_is(((to_uint8_rgb(data.split("test"), 256).float() / 127.5 - 1).flatten(1) @ STANDIN_W.T).numpy(), 3)
    assert out["is_real_mean"] == pytest.approx(real[0], rel=1e-6)
    assert out["is_splits"] == 3 and out["is_num_samples"] == 30 and out["is_mean"] > 1.05
    capped = InceptionScore(extractor=standin, splits=50, num_samples=4, real=False,
                            context=ctx.build_context).compute(ctx)
    assert capped["is_splits"] == 4 and capped["is_num_samples"] == 4 and "is_real_mean" not in capped


# ------------------------------------------------------------------ InceptionV3 from a local state dict
@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    """A state dict of torch-fidelity's InceptionV3 with seeded random weights, saved locally."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        module = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    state = module.state_dict()
    # randomly initialised, the pool features are ~1e-8 and nearly equal across images: an fc
    # orthogonal to their mean and scaled to their spread gives logits that differ between images,
    # so that the score is not ~1 and the comparison below can fail
    with torch.no_grad():
        f = module(to_uint8_rgb(Images(n=6, seed=5).split("test"), 256))[0].double()
    mu = f.mean(0)
    w = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w -= (w @ mu)[:, None] * mu[None] / (mu @ mu)
    w *= 3.0 / float(((f - mu) @ w.T).std())
    state["fc.weight"] = w.float()
    path = tmp_path_factory.mktemp("inception") / "fake-inception.pth"
    torch.save(state, path)
    return path


@pytest.mark.slow  # InceptionV3 at 299x299 on the CPU: ~15 s
def test_metric_equals_a_direct_torch_fidelity_call(offline, fake_inception, monkeypatch):
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(fake_inception))
    data, gen = Images(n=6), Images(n=6, seed=5).split("test")
    ctx = metric_context(data, gen, store=offline / "store")
    out = InceptionScore(splits=2, batch_size=6, context=ctx.build_context).compute(ctx)
    direct = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(to_uint8_rgb(gen, 256)), isc=True, isc_splits=2, cuda=False, batch_size=6,
        cache=False, verbose=False, save_cpu_ram=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(fake_inception))
    assert out["is_mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-6)
    assert out["is_std"] == pytest.approx(direct["inception_score_std"], rel=1e-5, abs=1e-9)
    assert out["is_mean"] > 1.01  # the wide fc makes the score informative, so the check can fail
    assert out["is_splits"] == 2 and out["is_num_samples"] == 6
    assert out["is_real_num_samples"] == 6 and out["is_real_mean"] != out["is_mean"]
    assert (ctx.artifact_dir / "is.json").is_file()


def test_skips_without_inception_weights_and_on_points(offline):
    ctx = metric_context(Images(n=4), Images(n=4).split("test"), store=offline / "store")
    metric = InceptionScore(context=ctx.build_context)
    with pytest.raises(MetricSkipped, match="no InceptionV3 weights.*BENCH_INCEPTION_WEIGHTS"):
        metric.compute(ctx)
    pts = Images(shape=(2,), modality="points")
    ctx = metric_context(pts, pts.split("test"), store=offline / "store")
    with pytest.raises(MetricSkipped, match="does not apply to points data"):
        InceptionScore(context=ctx.build_context).compute(ctx)


def test_a_named_bad_weights_file_or_an_extractor_without_logits_is_an_error(offline):
    ctx = metric_context(Images(n=4), Images(n=4).split("test"), store=offline / "store")
    with pytest.raises(UserError, match="does not exist"):
        InceptionScore(extractor={"name": "inception-v3-compat", "weights_path": str(offline / "nope.pth")},
                       context=ctx.build_context)
    with pytest.raises(UserError, match="gives no class logits"):
        InceptionScore(extractor="random-proj", context=ctx.build_context)
