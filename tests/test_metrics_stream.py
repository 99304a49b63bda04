"""Metrics at full size: samples streamed in chunks, features accumulated chunk by chunk, samples
saved to ``samples.npz`` and re-measured without sampling (docs/metrics.md, "Metrics at full size").

Oracles: torch-fidelity's one-shot extraction (``extract_features`` on the whole uint8 tensor) for
the streamed features; the held-tensor path (``FID.compute`` on ``ctx.samples``) for the runner's
streamed metrics; torch's own allocation records for the memory bound.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.runner import CaseJob, CaseRunner, RunSettings
from bench.suite import load_suite
from bench_metrics import fidelity
from bench_metrics.common import Rows, subset_rows, tensor_digest
from bench_metrics.extractor_base import to_uint8_rgb
from bench_metrics.stream import FeatureStream, feed, uint8_digest
from bench_metrics.testing import build_context, metric_context

SUITE = """
name: stream
store: store
results: results
defaults:
  train: {steps: 0}
  eval: {num_samples: %(n)d, batch_size: %(bs)d, grid: 8%(eval)s}
matrix:
  dataset: [{name: gaussian_image, size: 8, channels: 3, n_train: 1500, n_test: 600}]
  family: [oracle_vp]
  sampler: [{name: ddim, steps: 3}]
metrics:
%(metrics)s
"""
FIDELITY = """  - {name: fid, extractor: random-proj, bootstrap: 0}
  - {name: kid, extractor: random-proj, bootstrap: 0, subset_size: 50, subsets: 5}
  - {name: prc, extractor: random-proj, bootstrap: 0}"""


def runner_for(workdir, manager, n=700, bs=300, metrics=FIDELITY, eval_extra="", results="results"):
    (workdir / "suite.yaml").write_text(SUITE % {"n": n, "bs": bs, "eval": eval_extra, "metrics": metrics})
    case = load_suite(workdir / "suite.yaml", manager.registries, manager.versions()).cases[0]
    job = CaseJob(case.to_dict(), RunSettings(store=str(workdir / "store"), results_dir=str(workdir / results),
                                              quiet=True))
    return CaseRunner(case, job)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(537, 3, 8, 8, generator=gen) * 0.6).clamp(-1.2, 1.2)


@pytest.fixture(scope="module")
def projection(tmp_path_factory):
    from bench.protocols import DataInfo

    class Data:
        info = DataInfo(name="img", shape=(3, 8, 8), modality="image", levels=256)

    ctx = build_context(Data(), tmp_path_factory.mktemp("store"))
    ext = ctx.build("feature_extractor", {"name": "random-proj", "dim": 16})
    ext.prepare()
    return ext


@pytest.mark.parametrize("chunks", [[537], [100, 37, 400], [64, 64, 1, 408], [1] * 5 + [532]])
def test_streamed_features_equal_torch_fidelity_on_the_whole_set_bit_for_bit(images, projection, chunks):
    """Chunk sizes that are not multiples of the extractor's batch: the extractor still sees the
    batches of the one-shot call, so the features (and the content digest) are identical."""
    u8 = to_uint8_rgb(images, 256, True)
    whole = fidelity.extract_features(projection, u8, 64)
    stream = FeatureStream(lambda b: fidelity.extract_features(projection, b, 64), len(images), 256, True, 64)
    start = 0
    for size in chunks:
        stream.update(images[start:start + size], start)
        stream.update(images[start:start + size], start)  # a second metric feeding the same chunk: ignored
        start += size
    feats = stream.finish()
    assert torch.equal(feats, whole)
    assert stream.digest() == tensor_digest(u8)


def test_a_stream_with_a_cap_reads_the_first_rows_only_and_refuses_a_gap(images, projection):
    stream = FeatureStream(lambda b: fidelity.extract_features(projection, b, 64), 200, 256, True, 64)
    stream.update(images[:150], 0)
    stream.update(images[150:300], 150)
    assert torch.equal(stream.finish(), fidelity.extract_features(projection, to_uint8_rgb(images[:200], 256), 64))
    gap = FeatureStream(lambda b: b, 10, 256, True, 4)
    with pytest.raises(ValueError, match="never fed"):
        gap.update(images[5:8], 5)
    short = FeatureStream(lambda b: b.float(), 10, 256, True, 4)
    short.update(images[:6])
    with pytest.raises(ValueError, match="6 rows fed, 10 announced"):
        short.finish()


def test_lazy_rows_and_chunked_digest_equal_the_materialised_subset(images):
    rows = subset_rows(images, 300, "floor", "train")
    from bench_metrics.common import fixed_subset

    assert torch.equal(torch.cat(list(rows.chunks(77))), fixed_subset(images, 300, "floor", "train"))
    assert uint8_digest(rows, 256, True, chunk=50) == tensor_digest(to_uint8_rgb(rows.tensor(), 256, True))
    stream = feed(FeatureStream(lambda b: b.flatten(1).float(), len(rows), 256, True, 64), rows, chunk=33)
    assert torch.equal(stream.finish(), to_uint8_rgb(rows.tensor(), 256).flatten(1).float())
    assert len(Rows(images)) == len(images)


def test_runner_streams_fidelity_metrics_and_they_equal_the_held_tensor_path(workdir, manager):
    runner = runner_for(workdir, manager)
    record = runner.run()
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    # the same case's samples, held, through FID/KID/PRC.compute (the path before streaming)
    family = runner.regs.family.create(runner.case.family, context=build_context(runner.load_dataset(), workdir / "s2"))
    sampler = runner.regs.sampler.create(runner.case.sampler, context=build_context(runner.load_dataset(), workdir / "s2"))
    samples = runner.sample(family, sampler, 700).samples
    ctx = metric_context(runner.load_dataset(), samples, store=workdir / "s3")
    for spec in ({"name": "fid", "extractor": "random-proj", "bootstrap": 0},
                 {"name": "kid", "extractor": "random-proj", "bootstrap": 0, "subset_size": 50, "subsets": 5},
                 {"name": "prc", "extractor": "random-proj", "bootstrap": 0}):
        held = runner.regs.metric.create(spec, context=ctx.build_context).compute(ctx)
        for key, value in held.items():
            if not key.endswith("_ref_cached"):
                assert m[key] == value, key
    assert m["fid_num_samples"] == 700 and m["num_samples"] == 700


def test_a_metric_without_a_streaming_form_is_held_below_hold_samples_and_skipped_above(workdir, manager):
    swd = "  - {name: swd, bootstrap: 0}"
    below = runner_for(workdir, manager, n=400, bs=100, metrics=swd).run()
    assert below["status"] == "ok" and "swd" in below["metrics"]
    above = runner_for(workdir, manager, n=400, bs=100, metrics=swd, eval_extra=", hold_samples: 399",
                       results="r2").run()
    assert above["status"] == "ok" and "swd" not in above["metrics"]
    assert "eval.hold_samples" in above["skipped_metrics"]["swd[bootstrap=0]"]


def largest_allocation(fn) -> int:
    """The largest CPU allocation (bytes) any torch operator made while ``fn`` ran."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events())


def test_memory_of_the_streamed_path_is_bounded_by_a_chunk_not_by_the_sample_count(workdir, manager, monkeypatch):
    """4 chunks of 250 samples (real sets converted 125 rows at a time): no tensor the case allocates
    is larger than one chunk in float64 (the uint8 conversion), 250 x 192 x 8 bytes, half the 1000
    float32 samples; with the whole tensor held (swd), one is as large as all of them."""
    from bench_metrics import stream

    monkeypatch.setattr(stream, "CONVERT_ROWS", 125)
    full, chunk64 = 1000 * 3 * 8 * 8 * 4, 250 * 3 * 8 * 8 * 8
    streamed = runner_for(workdir, manager, n=1000, bs=250, metrics=FIDELITY.rsplit("\n", 1)[0])  # prc: its
    # own k-NN distance matrices grow with n (torch-fidelity's algorithm, docs/metrics.md)
    streamed.load_dataset()  # the data set is built before measuring (its size does not depend on n)
    assert largest_allocation(lambda: streamed.run()) <= chunk64
    held = runner_for(workdir, manager, n=1000, bs=250, metrics="  - {name: swd, bootstrap: 0}", results="r2")
    assert largest_allocation(lambda: held.run()) >= full  # the test can see a held sample tensor


def test_saved_samples_are_re_measured_to_the_same_metrics_without_sampling(workdir, manager, monkeypatch):
    first = runner_for(workdir, manager, eval_extra=", save_samples: true")
    rec = first.run()
    assert rec["status"] == "ok", rec.get("error")
    saved = first.dir / "samples.npz"
    with np.load(saved) as z:
        meta = json.loads(str(z["meta"]))
        assert z["x_000000"].dtype == np.float32  # gaussian_image is not quantised: float32
    assert meta["num_samples"] == 700 and meta["chunks"] == 3 and meta["case_hash"] == first.case.hash

    from bench_diffusion.samplers.discrete import DDIM

    def no_sampling(*a, **k):
        raise AssertionError("the sampler was called")

    monkeypatch.setattr(DDIM, "sample", no_sampling)
    again = runner_for(workdir, manager, eval_extra=f", samples_from: {saved}", results="r2").run()
    assert again["status"] == "ok", again.get("error")
    same = {k: v for k, v in rec["metrics"].items() if not k.startswith(("time_", "peak_", "metric_time"))
            and not k.endswith("_ref_cached")}
    assert {k: again["metrics"][k] for k in same} == same
    assert any("the sampler was not called" in n for n in again["notes"])


def test_quantised_data_are_saved_as_uint8_levels_and_give_the_same_fidelity_metrics(workdir, manager):
    from bench.samplefile import SampleWriter, read_chunks

    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(300, 3, 8, 8, generator=gen) * 2.2 - 1.1)
    writer = SampleWriter(workdir, "uint8", 32)
    for lo in range(0, 300, 128):
        writer.append(x[lo:lo + 128])
    writer.close({"case_id": "c"})
    back = torch.cat(list(read_chunks(workdir)))
    with np.load(workdir / "samples.npz") as z:
        assert z["x_000000"].dtype == np.uint8 and z["x_000000"].shape == (128, 3, 8, 8)
    assert torch.equal(to_uint8_rgb(back, 32, True), to_uint8_rgb(x, 32, True))
    assert len(list(read_chunks(workdir, limit=130))) == 2


def test_an_incomplete_or_missing_samples_file_is_one_clear_line(workdir, manager):
    from bench.errors import UserError
    from bench.samplefile import SampleWriter, read_meta

    w = SampleWriter(workdir, "float32", None)
    w.append(torch.zeros(2, 3))
    w.abort()
    (workdir / "samples.npz.partial").rename(workdir / "samples.npz")
    with pytest.raises(UserError, match="incomplete samples file"):
        read_meta(workdir)
    from bench.errors import SuiteErrors

    with pytest.raises((SuiteErrors, UserError), match="no such file"):
        runner_for(workdir, manager, eval_extra=", samples_from: nowhere.npz")


def test_fid_without_its_floor_gives_the_same_fid_and_extracts_no_floor(workdir, images):
    from bench.protocols import DataInfo

    class Data:
        info = DataInfo(name="img", shape=(3, 8, 8), modality="image", levels=256)

        def split(self, name):
            return images[:300] if name == "test" else images[300:]

    ctx = metric_context(Data(), images[:200], store=workdir / "store")
    spec = {"name": "fid", "extractor": {"name": "random-proj", "dim": 16}, "bootstrap": 0}
    with_floor = ctx.build("metric", spec).compute(ctx)
    before = dict(fidelity.COUNTERS)
    ctx2 = metric_context(Data(), images[:200], store=workdir / "store2")
    without = ctx2.build("metric", {**spec, "floor": False}).compute(ctx2)
    assert without["fid"] == with_floor["fid"] and "fid_floor" in with_floor
    assert "fid_floor" not in without and "fid_floor_num_samples" not in without
    assert fidelity.COUNTERS["reference_computed"] - before["reference_computed"] == 1  # the reference only


def test_fid_on_an_unlabelled_npz_data_set(workdir, images):
    """npz without ``y`` has a ``labels`` method that raises: the reference then has no labels (the
    metric failed with "has no labels" before)."""
    from bench_data.npz import NPZImages

    np.savez(workdir / "d.npz", x=to_uint8_rgb(images, 256).numpy())
    data = NPZImages(path=workdir / "d.npz", test_fraction=0.5)
    ctx = metric_context(data, images[:100], store=workdir / "store")
    out = ctx.build("metric", {"name": "fid", "extractor": {"name": "random-proj", "dim": 8}, "bootstrap": 0}).compute(ctx)
    assert out["fid"] > 0 and ctx.labels("reference", {"name": "random-proj", "dim": 8}) is None


def test_the_digest_of_a_real_set_is_remembered_until_the_tensor_changes(images):
    from bench.protocols import DataInfo

    info = DataInfo(name="img", shape=(3, 8, 8), modality="image", levels=256)
    data = images.clone()
    rows = subset_rows(data, 100, "floor", "train")
    want = tensor_digest(to_uint8_rgb(rows.tensor(), 256))
    assert fidelity.uint8_and_digest(rows, info, True, memo=True)[1] == want
    u8, again = fidelity.uint8_and_digest(rows, info, True, memo=True)
    assert u8 is None and again == want  # remembered: nothing converted
    data.mul_(-1)  # in place: the version counter moves, the memo no longer applies
    assert fidelity.uint8_and_digest(rows, info, True, memo=True)[1] == tensor_digest(to_uint8_rgb(rows.tensor(), 256)) != want


def test_streamed_metrics_run_in_the_callers_grad_mode(workdir, manager, monkeypatch):
    """A metric's share of a streamed sampling runs as metrics do after sampling: with gradients on (an
    extractor may train its classifier on first use, as the digits classifier does) and outside the
    sampler's no-grad block; the bf16 quickstart's digits cases failed on this."""
    seen = []
    original = fidelity._Fidelity.accumulate

    def spy(self, ctx, chunk, start):
        seen.append(torch.is_grad_enabled())
        return original(self, ctx, chunk, start)

    monkeypatch.setattr(fidelity._Fidelity, "accumulate", spy)
    record = runner_for(workdir, manager).run()
    assert record["status"] == "ok", record.get("error")
    assert seen and all(seen)
