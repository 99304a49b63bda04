"""FID/KID/precision-recall: closed forms, parity with torch_fidelity.calculate_metrics, reference
caching by content, and the offline InceptionV3 rules (no network access anywhere in this file)."""
import socket

import types

import numpy as np
import pytest
import scipy.linalg
import torch
import torch_fidelity

from bench.errors import UserError
from bench.protocols import DataInfo
from bench_metrics import extractors as ex
from bench_metrics.digits_classifier import threads
from bench_metrics.fidelity import (COUNTERS, FID, KID, PRC, ImageTensorDataset, extract_features, fid_from_features,
                                    fidelity_module, kid_from_features, precompute_reference)
from bench_metrics.testing import build_context, metric_context


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


class GaussImages:
    """1x4x4 8-bit images whose pixel values are rounded Gaussians N(mean, cov) (in 0..255 units)."""

    def __init__(self, mean, cov, n_train=4000, n_test=4000, seed=0):
        self.info = DataInfo("gauss-images", (1, 4, 4), "image", levels=256, value_range=(-1.0, 1.0))
        self.mean, self.cov = np.asarray(mean, float), np.asarray(cov, float)
        self._s = {"train": self.draw(n_train, seed + 1), "test": self.draw(n_test, seed + 2)}

    def draw(self, n, seed):
        u = np.random.default_rng(seed).multivariate_normal(self.mean, self.cov, n)
        u = np.clip(np.round(u), 0, 255)
        return torch.tensor(u / 127.5 - 1, dtype=torch.float32).reshape(n, 1, 4, 4)

    def split(self, name):
        return self._s[name]


def spd(seed, lo, hi, d=16):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return (q * np.linspace(lo, hi, d)) @ q.T


def test_uint8_conversion_keeps_levels_and_greys_to_rgb():
    k = torch.arange(17, dtype=torch.float32)
    x = (2 * k / 16 - 1).reshape(1, 1, 1, 17)
    u = ex.to_uint8_rgb(x, levels=17)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 1, 17)
    assert u[0, 0, 0].tolist() == [round(255 * i / 16) for i in range(17)]
    assert torch.equal(u[:, 0], u[:, 1]) and torch.equal(u[:, 1], u[:, 2])
    # generated values between levels are quantised to the data's 17 levels first (k = 3.4 -> 3)
    off = ex.to_uint8_rgb(torch.full((1, 1, 1, 1), 2 * 3.4 / 16 - 1), levels=17)
    assert int(off.flatten()[0]) == round(255 * 3 / 16)
    assert int(ex.to_uint8_rgb(torch.full((1, 1, 1, 1), 2 * 3.4 / 16 - 1), 17, quantize=False).flatten()[0]) == \
        round(127.5 * 2 * 3.4 / 16)


def test_fid_of_a_set_with_itself_is_zero(tmp_path):
    f = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    assert abs(fid_from_features(f, f)) < 1e-6
    data = GaussImages(np.full(16, 120.0), 400 * np.eye(16), n_train=600, n_test=600)
    ctx = metric_context(data, data.split("test"), store=tmp_path)
    out = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert abs(out["fid"]) < 1e-6 and out["fid_floor"] > 1e-3


def test_fid_with_a_linear_extractor_is_the_closed_form_frechet_distance(tmp_path):
    # features f = A u + b (random-proj is linear in the uint8 pixels u), so for Gaussian pixels the
    # features are Gaussian with mean A m and covariance A C A^T, C = cov + I/12 (rounding, Sheppard)
    m_ref, c_ref = np.full(16, 120.0), spd(1, 200, 600)
    m_gen = m_ref + np.linspace(-12, 12, 16)
    c_gen = spd(2, 100, 900)
    data = GaussImages(m_ref, c_ref, n_train=20000, n_test=20000)
    gen = GaussImages(m_gen, c_gen, n_train=1, n_test=20000, seed=7).split("test")
    ctx = metric_context(data, gen, store=tmp_path)
    out = FID(extractor={"name": "random-proj", "dim": 8, "seed": 3}, batch_size=2000,
              context=ctx.build_context).compute(ctx)
    w = ex.RandomProjection(dim=8, seed=3, context=ctx.build_context).weight().double().numpy()
    a = (w[:, :16] + w[:, 16:32] + w[:, 32:]) / 127.5  # grey repeated to 3 channels
    ca, cb = a @ (c_gen + np.eye(16) / 12) @ a.T, a @ (c_ref + np.eye(16) / 12) @ a.T
    dm = a @ (m_gen - m_ref)
    closed = dm @ dm + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert out["fid"] == pytest.approx(closed, rel=0.03)
    # the square-root term matters here: leaving it out would be far off
    assert abs(dm @ dm + np.trace(ca + cb) - 2 * np.sqrt(np.trace(ca) * np.trace(cb)) - closed) > 0.1 * closed
    assert out["fid_floor"] < 0.02 * closed and out["fid_num_samples"] == 20000


def test_kid_is_unbiased_on_samples_of_one_distribution():
    reps, n, d = 200, 50, 8
    g = torch.Generator().manual_seed(0)
    kids, biased = [], []
    k = lambda x, y: (x @ y.T / d + 1) ** 3
    with threads(1):
        for _ in range(reps):
            a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
            kids.append(kid_from_features(a, b, subsets=1, subset_size=n)[0])
            biased.append(float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()))  # V-statistic
    se = np.std(kids) / np.sqrt(reps)
    assert abs(np.mean(kids)) < 3 * se
    assert np.mean(biased) > 10 * se


def test_our_metrics_equal_a_direct_calculate_metrics_call(tmp_path):
    data = GaussImages(np.full(16, 120.0), spd(3, 200, 600), n_train=700, n_test=500)
    gen = GaussImages(np.full(16, 128.0), spd(4, 200, 600), n_train=1, n_test=400, seed=9).split("test")
    ctx = metric_context(data, gen, store=tmp_path)
    kw = dict(extractor={"name": "random-proj", "dim": 16}, batch_size=64, context=ctx.build_context)
    fid, kid = FID(**kw).compute(ctx), KID(**kw, subset_size=200, subsets=20).compute(ctx)
    prc = PRC(**kw).compute(ctx)
    ext = FID(**kw).extractor
    ext.prepare()
    direct = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(ex.to_uint8_rgb(gen, 256)), input2=ImageTensorDataset(ex.to_uint8_rgb(data.split("test"), 256)),
        fid=True, kid=True, prc=True, cuda=False, batch_size=64, cache=False, verbose=False, save_cpu_ram=True,
        kid_subset_size=200, kid_subsets=20, **ext.fidelity_kwargs())
    assert fid["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-9, abs=1e-12)
    # KID's kernel runs in float32 and we run it with one BLAS thread: equal to float32 rounding
    assert kid["kid"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-6)
    assert kid["kid_std"] == pytest.approx(direct["kernel_inception_distance_std"], rel=1e-5)
    assert prc["prc_precision"] == direct["precision"] and prc["prc_recall"] == direct["recall"]
    assert fid["fid"] > 10 * fid["fid_floor"]


def test_reference_statistics_are_cached_by_content(tmp_path):
    data = GaussImages(np.full(16, 120.0), 400 * np.eye(16), n_train=500, n_test=300)
    gen = data.draw(200, 99)
    ctx = metric_context(data, gen, store=tmp_path)
    before = dict(COUNTERS)
    first = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert first["fid_ref_cached"] == 0 and COUNTERS["reference_computed"] == before["reference_computed"] + 2
    second = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    kid = KID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert second["fid_ref_cached"] == 1 and kid["kid_ref_cached"] == 1
    assert COUNTERS["reference_computed"] == before["reference_computed"] + 2  # nothing recomputed
    assert second["fid"] == first["fid"] and second["fid_floor"] == first["fid_floor"]
    # another extractor, or the same dataset name with other content, is a different entry
    other = FID(extractor={"name": "random-proj", "seed": 1}, context=ctx.build_context).compute(ctx)
    assert other["fid_ref_cached"] == 0
    changed = GaussImages(np.full(16, 121.0), 400 * np.eye(16), n_train=500, n_test=300)
    ctx2 = metric_context(changed, gen, store=tmp_path)
    assert FID(extractor="random-proj", context=ctx2.build_context).compute(ctx2)["fid_ref_cached"] == 0
    # and the artifact records the feature space and the counts
    import json

    rec = json.loads((ctx.artifact_dir / "fid.json").read_text())
    assert rec["extractor"]["name"] == "random-proj" and "NOT a perceptual" in rec["extractor"]["note"]
    assert rec["values"]["fid_num_samples"] == 200 and rec["reference"]["split"] == "test"


def test_precompute_reference_fills_the_cache_the_metric_then_uses(tmp_path):
    data = GaussImages(np.full(16, 120.0), 400 * np.eye(16), n_train=500, n_test=300)
    bctx = build_context(data, tmp_path)
    spec = {"name": "fid", "extractor": "random-proj", "id": "fid-rp"}
    summary = precompute_reference(bctx, spec, num_samples=250)
    assert summary["reference"]["num_samples"] == 300 and summary["floor"]["num_samples"] == 250
    assert summary["reference"]["cached"] is False
    assert precompute_reference(bctx, spec, num_samples=250)["reference"]["cached"] is True
    ctx = metric_context(data, data.draw(250, 5), store=tmp_path)
    out = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert out["fid_ref_cached"] == 1
    with pytest.raises(ValueError, match="not a fidelity metric"):
        precompute_reference(bctx, {"name": "swd"})


def test_floor_smaller_than_the_generated_set_is_reported(tmp_path):
    data = GaussImages(np.full(16, 120.0), 400 * np.eye(16), n_train=150, n_test=300)
    ctx = metric_context(data, data.draw(250, 5), store=tmp_path, log=(logs := []).append)
    out = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert out["fid_floor_num_samples"] == 150 and out["fid_num_samples"] == 250
    assert "fid_at_floor_n" in out and any("floor uses all" in m for m in logs)


def test_a_plain_callable_extractor_is_wrapped_for_torch_fidelity():
    lin = torch.nn.Linear(16, 5)
    wrapped = ex.as_fidelity_extractor(lambda x: lin(x.flatten(1)), DataInfo("g", (1, 4, 4), "image", 256))
    x = torch.rand(10, 1, 4, 4) * 2 - 1
    u = ex.to_uint8_rgb(x, 256)
    feats = extract_features(wrapped, u, 4)
    with torch.no_grad():
        assert torch.allclose(feats, lin((u[:, :1].float() / 127.5 - 1).flatten(1)), atol=1e-6)


# ------------------------------------------------------------------------------------------ InceptionV3
@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    return tmp_path


def test_missing_inception_weights_fail_at_once_with_instructions(offline):
    with pytest.raises(UserError) as err:
        ex.InceptionV3()
    text = str(err.value)
    assert "no InceptionV3 weights available offline" in text
    assert "BENCH_INCEPTION_WEIGHTS" in text and "weights_path" in text and "BENCH_ALLOW_DOWNLOAD=1" in text
    # the metric fails when it is built (before any feature is computed), also through "auto" on RGB data
    data = GaussImages(np.full(16, 120.0), 400 * np.eye(16), n_train=10, n_test=10)
    with pytest.raises(UserError, match="no InceptionV3 weights"):
        FID(extractor="inception-v3-compat", context=build_context(data, offline / "store"))
    with pytest.raises(UserError, match="no feature space for gauss-images"):  # 4x4: too small for Inception
        FID(extractor="auto", context=build_context(data, offline / "store"))
    rgb = types.SimpleNamespace(info=DataInfo("rgb32", (3, 32, 32), "image", levels=256, value_range=(-1.0, 1.0)))
    with pytest.raises(UserError, match="no InceptionV3 weights"):
        FID(extractor="auto", context=build_context(rgb, offline / "store"))


def test_allowing_downloads_defers_to_torch_hub(offline, monkeypatch):
    monkeypatch.setenv("BENCH_ALLOW_DOWNLOAD", "1")
    assert ex.InceptionV3().weights_path is None  # nothing fetched until prepare()
    monkeypatch.delenv("BENCH_ALLOW_DOWNLOAD")
    assert ex.InceptionV3(allow_download=True).weights_path is None


def test_missing_corrupt_or_foreign_weight_files_are_rejected(offline, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        ex.InceptionV3(weights_path=str(offline / "nope.pth"))
    bad = offline / "corrupt.pth"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(bad))
    with pytest.raises(UserError, match="corrupt or not a PyTorch state dict.*BENCH_INCEPTION_WEIGHTS") as err:
        ex.InceptionV3()
    assert "BENCH_INCEPTION_WEIGHTS=/path/to/" in str(err.value)
    foreign = offline / "foreign.pth"
    torch.save({"layer.weight": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="not torch-fidelity's InceptionV3 state dict"):
        ex.InceptionV3(weights_path=str(foreign))


def test_a_weights_file_of_the_right_structure_reaches_torch_fidelity(offline, monkeypatch):
    # random weights with the right structure (this checks plumbing only; no real FID is claimed)
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:  # build the architecture without any weights
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = offline / "fake-structure.pth"
    torch.save(state, path)
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(path))
    ext = ex.InceptionV3()
    ext.prepare()
    desc = ext.describe()
    assert desc["weights_sha256"] and "not comparable" in desc["warning"]
    module = fidelity_module(ext)
    assert torch.equal(module.fc.weight, state["fc.weight"])
