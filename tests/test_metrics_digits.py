"""The digits-classifier feature space: deterministic, accurate, and FID in it behaves (real << noise,
rising as patches are shuffled at smaller sizes: thesis section 4.7.1 in miniature)."""
import json
import socket
from pathlib import Path

import pytest
import torch
import torch_fidelity
from torch_fidelity.metric_fid import fid_features_to_statistics
from typer.testing import CliRunner

from bench.cli import app
from bench_metrics.extractors import DigitsClassifier, to_uint8_rgb
from bench_metrics.fidelity import FID, KID, PRC, ImageTensorDataset, extract_features, fid_from_stats, real_features
from bench_metrics.patches import shuffle_patches
from bench_metrics.testing import build_context, metric_context, registries


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-store")


@pytest.fixture(scope="module")
def digits16():
    return registries().dataset.create({"name": "digits16"})


@pytest.fixture(scope="module")
def digits8():
    return registries().dataset.create({"name": "digits8"})


def classifier(dataset, store):
    ext = registries().feature_extractor.create({"name": "auto"}, context=build_context(dataset, store))
    assert isinstance(ext, DigitsClassifier)  # auto picks it for the digits
    ext.prepare()
    return ext


def test_classifier_is_deterministic_cached_and_accurate(digits8, store):
    ext = classifier(digits8, store)
    assert ext.info_log["test_accuracy"] > 0.9 and ext.info_log["trained_now"]
    again = DigitsClassifier(context=build_context(digits8, store))
    assert again.cache_key() == ext.cache_key()
    again.prepare()  # from the store, not retrained
    assert again.weights_path == ext.weights_path and not again.info_log["trained_now"]
    model, _ = again.train_model()  # retrain from scratch: the same weights, bit for bit
    stored = torch.load(ext.weights_path, weights_only=True)["state_dict"]
    fresh = model.state_dict()
    assert stored.keys() == fresh.keys() and all(torch.equal(stored[k], fresh[k]) for k in stored)
    # a different training config is a different cache entry
    assert DigitsClassifier(epochs=3, context=build_context(digits8, store)).cache_key() != ext.cache_key()


def fid_to_train(ext, dataset, store, images):
    ref = real_features(ext, dataset.split("train"), dataset.info, "train", True, 64, store=build_context(dataset, store).store)
    feats = extract_features(ext, to_uint8_rgb(images, dataset.info.levels), 64)
    return fid_from_stats(fid_features_to_statistics(feats), ref.stats)


def test_fid_rises_as_patches_shrink_and_real_is_far_below_noise(digits16, store):
    ext = classifier(digits16, store)
    assert ext.info_log["test_accuracy"] > 0.9
    test = digits16.split("test")
    fids = {p: fid_to_train(ext, digits16, store, shuffle_patches(test, p, torch.Generator().manual_seed(0)))
            for p in (16, 8, 4, 2, 1)}
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_noise = fid_to_train(ext, digits16, store, noise)
    assert fids[16] == pytest.approx(fid_to_train(ext, digits16, store, test))  # 16x16 patch = identity
    values = [fids[p] for p in (16, 8, 4, 2, 1)]
    assert all(a < b for a, b in zip(values, values[1:])), fids
    assert fid_noise > values[-1] and fid_noise > 20 * fids[16], (fids, fid_noise)


def test_digits_fid_equals_a_direct_calculate_metrics_call(digits8, store):
    gen = shuffle_patches(digits8.split("test")[:200], 4, torch.Generator().manual_seed(1))
    ctx = metric_context(digits8, gen, store=store)
    fid = FID(context=ctx.build_context).compute(ctx)  # extractor auto -> digits-classifier
    kid = KID(subset_size=150, context=ctx.build_context).compute(ctx)
    prc = PRC(context=ctx.build_context).compute(ctx)
    ext = FID(context=ctx.build_context).extractor
    ext.prepare()
    direct = torch_fidelity.calculate_metrics(
        input1=ImageTensorDataset(to_uint8_rgb(gen, 17)), input2=ImageTensorDataset(to_uint8_rgb(digits8.split("train"), 17)),
        fid=True, kid=True, prc=True, cuda=False, batch_size=64, cache=False, verbose=False, save_cpu_ram=True,
        kid_subset_size=150, **ext.fidelity_kwargs())
    assert fid["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-9)
    # KID's kernel runs in float32 and we run it with one BLAS thread: equal to float32 rounding
    assert kid["kid"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-6)
    assert prc["prc_precision"] == direct["precision"] and prc["prc_recall"] == direct["recall"]
    assert fid["fid_ref_num_samples"] == len(digits8.split("train"))  # reference = the classifier's split
    assert fid["fid_floor_num_samples"] == 200 and fid["fid_extractor_test_acc"] > 0.9
    assert fid["fid"] > 5 * fid["fid_floor"]  # 4x4-shuffled digits are not digits


SUITE = """\
name: digitsrun
seed: 0
defaults:
  train: {steps: 30, batch_size: 128, lr: 0.05}
  eval: {num_samples: 300, batch_size: 150, grid: 0}
matrix:
  dataset: [digits8]
  family: [fitgauss]
  sampler: [gauss, {name: gauss, steps: 4}]
metrics: [fid, {name: kid, subset_size: 200, subsets: 20}, prc, swd]
"""


def test_fidelity_metrics_in_a_run_reuse_the_reference(workdir, store, digits8):
    classifier(digits8, store)  # the run finds the classifier in the store
    (workdir / "suite.yaml").write_text(SUITE)
    result = CliRunner().invoke(app, ["run", "suite.yaml", "-q", "--plugins", "bench_testplug", "--store", str(store)])
    assert result.exit_code == 0, result.output
    records = sorted((json.loads(p.read_text()) for p in Path("results").glob("digitsrun/*/cases/*/record.json")),
                     key=lambda r: r["started"])
    assert [r["status"] for r in records] == ["ok", "ok"], [r.get("error") for r in records]
    first, second = records[0]["metrics"], records[1]["metrics"]
    for key in ("fid", "fid_floor", "fid_num_samples", "kid", "kid_floor", "prc_precision", "prc_recall", "swd",
                "swd_floor", "fid_extractor_test_acc"):
        assert key in first, key
    assert first["fid_num_samples"] == 300 and first["fid_extractor_test_acc"] > 0.9
    assert second["fid_ref_cached"] == 1 and second["kid_ref_cached"] == 1
    # a diagonal Gaussian fitted to digits is no digit generator
    assert first["fid"] > 5 * first["fid_floor"]
    notes = " ".join(records[0]["notes"])
    assert "digits-classifier" in notes
    assert any(a.endswith("fid.json") for a in records[0]["artifacts"])
