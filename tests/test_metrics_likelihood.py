"""bpd/nll through a family's log_likelihood: the 2.047 bits/dim of N(0, I), the dequantisation
offset by hand, discrete methods, method selection and pass-through options."""
import math

import pytest
import torch
from torch import nn

from bench.context import MetricSkipped
from bench.errors import UserError
from bench.likelihood import bits_per_dim
from bench.protocols import DataInfo, LikelihoodResult
from bench_metrics.likelihood import BitsPerDim, NegLogLikelihood
from bench_metrics.testing import metric_context


class StdNormal(nn.Module):
    """An N(0, I) model with an exact log-density; records what it was given."""

    provides = frozenset({"likelihood"})
    trainable = False
    likelihood_methods = {"exact": "continuous", "const": "continuous", "vlb": "discrete"}

    def __init__(self, const=10.0):
        super().__init__()
        self.const, self.seen, self.opts = const, [], []

    def log_likelihood(self, x, rng, method=None, **opts):
        self.seen.append(x.clone())
        self.opts.append(dict(opts))
        d = x[0].numel()
        if method == "exact":
            nll = 0.5 * x.flatten(1).pow(2).sum(1) + 0.5 * d * math.log(2 * math.pi)
        else:
            nll = torch.full((len(x),), self.const)
        kind = {"exact": "continuous", "const": "continuous", "vlb": "discrete"}[method]
        return LikelihoodResult(nll, kind, method, nfe=3.0, extra={"probe_var": 0.5})

    def nfe_modules(self):
        return []


class Data:
    def __init__(self, train, test, info):
        self.info, self._s = info, {"train": train, "test": test}

    def split(self, name):
        return self._s[name]


def normal_points(n=40000, d=4):
    g = torch.Generator().manual_seed(0)
    return Data(torch.randn(10, d, generator=g), torch.randn(n, d, generator=g), DataInfo("n01", (d,), "points"))


def images(levels=17, n=50):
    g = torch.Generator().manual_seed(1)
    k = torch.randint(0, levels, (n, 1, 2, 2), generator=g).float()
    x = 2 * k / (levels - 1) - 1
    return Data(x, x, DataInfo("img", (1, 2, 2), "image", levels=levels, value_range=(-1.0, 1.0))), k


def test_bits_per_dim_of_standard_normal_data_under_standard_normal_model():
    expected = (math.log(2 * math.pi) + 1) / (2 * math.log(2))
    assert expected == pytest.approx(2.047, abs=5e-4)
    data = normal_points()
    out = BitsPerDim(num_samples=None, batch_size=10000).compute(metric_context(data, family=StdNormal()))
    assert "bpd" not in out  # continuous points: nats per dim only
    assert out["nll"] / math.log(2) == pytest.approx(expected, abs=3 * out["nll_sem"] / math.log(2) + 1e-3)
    nll = 0.5 * data.split("test").pow(2).sum(1) + 2 * math.log(2 * math.pi)
    assert float(bits_per_dim(nll, 4, None).mean()) == pytest.approx(expected, abs=0.01)
    assert out["bpd_nfe"] == 3.0 and out["bpd_num_samples"] == 40000 and out["bpd_probe_var"] == 0.5


def test_dequantisation_offset_matches_the_hand_computation():
    data, k = images(levels=17)
    fam = StdNormal(const=10.0)
    out = BitsPerDim(method="const", num_samples=None, batch_size=7).compute(metric_context(data, family=fam))
    # bpd = (nll - D ln 2 + D ln L) / (D ln 2) with D = 4, L = 17, nll = 10 nats
    hand = 10 / (4 * math.log(2)) + math.log2(17) - 1
    assert out["bpd"] == pytest.approx(hand, rel=1e-12)
    # the model saw x = 2 (k + u) / L - 1 with u in [0, 1), u different per sample and pixel
    x = torch.cat(fam.seen)
    u = (x + 1) / 2 * 17 - k
    assert (u >= -1e-5).all() and (u < 1 + 1e-5).all() and u.std() > 0.2
    # per-sample noise streams: the same inputs whatever the batch size
    fam2 = StdNormal()
    BitsPerDim(method="const", num_samples=None, batch_size=50).compute(metric_context(data, family=fam2))
    assert torch.allclose(torch.cat(fam2.seen), x)
    # midpoint dequantisation: u = 1/2 exactly
    fam3 = StdNormal()
    BitsPerDim(method="const", num_samples=None, dequantization="midpoint").compute(metric_context(data, family=fam3))
    assert torch.allclose(torch.cat(fam3.seen), 2 * (k + 0.5) / 17 - 1)


def test_eight_bit_offset_is_seven_bits():
    # for 8-bit data in [-1, 1]: bpd = nll / (D ln 2) + log2(256) - 1
    data, _ = images(levels=256)
    out = BitsPerDim(method="const", num_samples=None).compute(metric_context(data, family=StdNormal(const=0.0)))
    assert out["bpd"] == pytest.approx(7.0, rel=1e-12)


def test_discrete_methods_get_quantised_data_and_no_offset():
    data, k = images(levels=17)
    fam = StdNormal(const=10.0)
    ctx = metric_context(data, family=fam)
    out = BitsPerDim(method="vlb", num_samples=None).compute(ctx)
    assert out["bpd"] == pytest.approx(10 / (4 * math.log(2)), rel=1e-12)
    assert torch.allclose(torch.cat(fam.seen), 2 * k / 16 - 1)
    nll = NegLogLikelihood(method="vlb", num_samples=None).compute(ctx)
    assert nll["nll"] == pytest.approx(out["bpd"] * math.log(2)) and nll["nll_nfe"] == 3.0


def test_method_choice_options_and_skips():
    data, _ = images()
    fam = StdNormal()
    ctx = metric_context(data, family=fam)
    BitsPerDim(num_samples=8, estimator="hutchinson", probes=2).compute(ctx)  # default = first method
    assert fam.opts[-1] == {"estimator": "hutchinson", "probes": 2}
    assert len(torch.cat(fam.seen)) == 8
    with pytest.raises(UserError, match="not provided by the family"):
        BitsPerDim(method="nope").compute(ctx)
    with pytest.raises(MetricSkipped):
        BitsPerDim().compute(metric_context(data, family=nn.Linear(1, 1)))
    lying = StdNormal()
    lying.likelihood_methods = {"vlb": "continuous"}  # but log_likelihood returns kind discrete
    with pytest.raises(ValueError, match="returned kind 'discrete'"):
        BitsPerDim().compute(metric_context(data, family=lying))
    assert (ctx.artifact_dir / "bpd.json").exists()
