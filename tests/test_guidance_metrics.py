"""class_acc and fid_per_class: the digits classifier and FID measured against the labels a
class-conditional sampler requested (bench_metrics.class_acc)."""
import pytest
import torch

from bench.context import MetricSkipped
from bench_metrics.class_acc import ClassAccuracy, PerClassFID
from bench_metrics.fidelity import fid_from_features, generated_features, real_features
from bench_metrics.testing import metric_context, registries


class Requested:
    """A sampler stand-in that generated sample i for class ``labels[i]``."""

    def __init__(self, labels):
        self.labels = torch.as_tensor(labels)

    def requested_labels(self, n, start=0):
        return self.labels[start:start + n]


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    data = registries().dataset.create({"name": "digits8"})
    return data, str(tmp_path_factory.mktemp("store"))


@pytest.mark.slow  # trains the digits classifier (about 9 s on a loaded 2-core machine)
def test_class_acc_is_the_classifier_accuracy_on_correctly_and_wrongly_labelled_images(digits8):
    data, store = digits8
    x, y = data.split("test"), data.labels("test")
    ctx = metric_context(data, x, store=store, sampler=Requested(y))
    metric = ClassAccuracy(classifier={"name": "digits-classifier", "epochs": 4}, context=ctx.build_context)
    right = metric.compute(ctx)
    assert right["class_acc"] == pytest.approx(right["class_acc_real"])  # the samples are the test split
    assert right["class_acc"] > 0.8
    assert right["class_acc_ci_lo"] < right["class_acc"] < right["class_acc_ci_hi"]
    se = (right["class_acc"] * (1 - right["class_acc"]) / len(x)) ** 0.5  # binomial standard error
    assert right["class_acc_ci_hi"] - right["class_acc_ci_lo"] == pytest.approx(2 * 1.96 * se, rel=0.3)
    wrong = metric.compute(metric_context(data, x, store=store, sampler=Requested((y + 1) % 10)))
    assert wrong["class_acc"] < 0.1


def test_class_metrics_skip_unconditional_samples(digits8):
    data, store = digits8
    ctx = metric_context(data, data.split("test")[:20], store=store, sampler=object())
    with pytest.raises(MetricSkipped, match="requested labels"):
        ClassAccuracy(context=ctx.build_context).compute(ctx)


def test_fid_per_class_is_the_fid_of_each_class_subset(digits8):
    data, store = digits8
    x, y = data.split("train")[:400], data.labels("train")[:400]  # reference: the test split
    ctx = metric_context(data, x, store=store, sampler=Requested(y))
    metric = PerClassFID(extractor="random-proj", context=ctx.build_context)
    out = metric.compute(ctx)
    ext = metric.extractor
    gen = generated_features(ext, x, data.info, True, 64).features
    ref = real_features(ext, data.split("test"), data.info, "test", True, 64, ctx.store, ctx.log).features
    ref_y = data.labels("test")
    for k in (0, 7):
        assert out[f"fid_class_{k}"] == pytest.approx(fid_from_features(gen[y == k], ref[ref_y == k]), rel=1e-6)
    assert out["fid_class_mean"] == pytest.approx(sum(out[f"fid_class_{k}"] for k in range(10)) / 10)
    assert out["fid_class_min_n"] == min(int((y == k).sum()) for k in range(10))
    shuffled = metric.compute(metric_context(data, x, store=store, sampler=Requested(y[torch.randperm(400)])))
    assert shuffled["fid_class_mean"] > out["fid_class_mean"]  # wrong labels: each class set is a mixture
