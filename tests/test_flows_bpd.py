"""BPD accounting of cnf and mrcnf against hand computations (DESIGN.md 7, flows-math.md 1.7-1.11)."""
import math

import numpy as np
import pytest
import torch

from bench.likelihood import bits_per_dim
from bench.protocols import DataInfo
from bench.rng import BatchRNG, PerSampleRNG
from bench_flows.cnf import CNF
from bench_flows.mrcnf import MRCNF
from bench_flows.sampler import ODESampler




L = 256
FAST = dict(hidden=[8, 8], solver="rk4", step_size=0.5, eval_solver="rk4", eval_step_size=0.5)


class Ctx:
    def __init__(self, shape=(1, 8, 8), levels=L, dataset=None):
        self.data = DataInfo("img", shape, "image", levels, (-1.0, 1.0))
        self.dataset = dataset


def images(n=6, shape=(1, 8, 8), seed=0):
    k = torch.randint(0, L, (n, *shape), generator=torch.Generator().manual_seed(seed)).double()
    return 2 * k / (L - 1) - 1, k


def logit_logp_unit(y, alpha):
    """log p_Y(y) for y in [0,1]^D under v = logit(alpha + (1 - 2 alpha) y), v ~ N(0, I), per sample."""
    s = alpha + (1 - 2 * alpha) * y
    v = np.log(s) - np.log1p(-s)
    ld = np.log(1 - 2 * alpha) - np.log(s) - np.log1p(-s)
    return (-0.5 * v ** 2 - 0.5 * math.log(2 * math.pi) + ld).reshape(len(y), -1).sum(1)


def test_dequantization_offset_matches_hand_computation():
    """An identity flow (zero-initialised dynamics): bpd = -log p_Y(y)/(D ln 2) + log2 L, y = (k+0.5)/L."""
    x, k = images()
    fam = CNF(**FAST, context=Ctx()).double()
    bpd = fam.bits_per_dim(x, BatchRNG(0, len(x)), noisy=False)
    y = ((k + 0.5) / L).numpy()
    d = y[0].size
    expect = -logit_logp_unit(y, 0.05) / (d * math.log(2)) + math.log2(L)
    np.testing.assert_allclose(bpd.numpy(), expect, rtol=1e-10)
    # the same through bench.likelihood.bits_per_dim and the family's log_likelihood (nats, model space)
    xt = 2 * (k + 0.5) / L - 1
    nll = fam.log_likelihood(xt, BatchRNG(0, len(x))).nll
    np.testing.assert_allclose(bits_per_dim(nll, d, L, math.log(2.0)).numpy(), expect, rtol=1e-10)
    # no logit: log p_X(x~) = log N(x~; 0, I), and p_Y(y) = 2^D p_X(x~)
    plain = CNF(**FAST, logit=False, context=Ctx()).double()
    bpd_plain = plain.bits_per_dim(x, BatchRNG(0, len(x)), noisy=False)
    xn = xt.numpy().reshape(len(x), -1)
    logp_y = (-0.5 * xn ** 2 - 0.5 * math.log(2 * math.pi)).sum(1) + d * math.log(2)
    np.testing.assert_allclose(bpd_plain.numpy(), -logp_y / (d * math.log(2)) + math.log2(L), rtol=1e-10)


def test_one_resolution_mrcnf_is_cnf():
    x, _ = images()
    torch.manual_seed(7)
    cnf = CNF(**FAST, zero_last=False, context=Ctx())
    torch.manual_seed(7)
    mr = MRCNF(n_resolutions=1, **FAST, zero_last=False, context=Ctx())
    assert list(cnf.state_dict()) == list(mr.state_dict())
    for a, b in zip(cnf.state_dict().values(), mr.state_dict().values()):
        assert torch.equal(a, b)
    x = x.float()
    b1 = cnf.bits_per_dim(x, BatchRNG(1, len(x)))
    b2 = mr.bits_per_dim(x, BatchRNG(1, len(x)))
    assert torch.equal(b1, b2)
    assert float(cnf.loss(x, BatchRNG(2, len(x)))) == float(mr.loss(x, BatchRNG(2, len(x))))


@pytest.mark.parametrize("transform", ["haar", "unimodular"])
def test_two_resolution_likelihood_sums_all_terms(transform):
    """Identity flows: log p(x) = log N(y; 0, s1^2) + [log N(logit x2) + logit ld] + dim(x2) log|det M^-1|,
    with y and x2 from the 4x4 patch matrices of eq. 4.3.2 / 4.3.4 applied by hand."""
    x, k = images(n=3)
    y_unit = ((k + torch.rand(k.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)) / L)
    xt = 2 * y_unit - 1
    fam = MRCNF(n_resolutions=2, transform=transform, multires_noise=True, **FAST, context=Ctx()).double()
    logp = -fam.log_likelihood(xt, BatchRNG(0, 3)).nll.numpy()
    c = 2 ** (2 / 3)
    d = 0.5 if transform == "haar" else 1 / c
    minv = np.array([[d, d, -d, -d], [d, -d, d, -d], [d, -d, -d, d], [.25] * 4])
    xn = xt.numpy()[:, 0]
    expect = []
    for img in xn:
        ys, coarse = [], np.zeros((4, 4))
        for i in range(4):
            for j in range(4):
                patch = np.array([img[2 * i, 2 * j], img[2 * i, 2 * j + 1], img[2 * i + 1, 2 * j], img[2 * i + 1, 2 * j + 1]])
                out = minv @ patch
                ys.append(out[:3])
                coarse[i, j] = out[3]
        ys = np.array(ys)
        s1 = 2 * d  # multi-resolution noise std of the 8x8 details (reference = 8)
        lp_y = (-0.5 * (ys / s1) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(s1)).sum()
        s2 = 0.5  # the 4x4 coarse image
        u = (coarse + 1) / 2
        s = 0.05 + 0.9 * u
        v = np.log(s) - np.log1p(-s)
        lp_c = (-0.5 * (v / s2) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(s2)).sum()
        lp_c += (math.log(0.9) + math.log(0.5) - np.log(s) - np.log1p(-s)).sum()
        expect.append(lp_y + lp_c + 16 * math.log(abs(np.linalg.det(minv))))
    np.testing.assert_allclose(logp, expect, rtol=1e-10)


@pytest.mark.parametrize("levels", [2, 3])
def test_super_resolution_keeps_the_coarse_image(levels):
    x, _ = images(n=4)
    torch.manual_seed(8)
    fam = MRCNF(n_resolutions=levels, **FAST, zero_last=False, context=Ctx())
    coarse = torch.nn.functional.avg_pool2d(x.float(), 2 ** (levels - 1))
    out = fam.generate(PerSampleRNG.for_indices(0, range(4)), 1.0, fam.eval_solver, coarse=coarse)
    assert out.shape == x.shape
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out, 2 ** (levels - 1)), coarse, rtol=0, atol=1e-5)
    assert (out - torch.nn.functional.interpolate(coarse, scale_factor=2 ** (levels - 1))).abs().max() > 1e-3


def test_ode_sampler_per_sample_seeds_and_temperature():
    torch.manual_seed(9)
    fam = MRCNF(n_resolutions=2, **FAST, zero_last=False, context=Ctx())
    sampler = ODESampler(temperature=0.8, context=None)
    full = sampler.sample(fam, PerSampleRNG.for_indices(0, range(4)))
    part = sampler.sample(fam, PerSampleRNG.for_indices(0, [2, 3]))
    torch.testing.assert_close(full[2:], part, rtol=0, atol=1e-5)
    assert full.shape == (4, 1, 8, 8) and sampler.steps == 2
    cold = ODESampler(temperature=0.0).sample(fam, PerSampleRNG.for_indices(0, range(3)))
    torch.testing.assert_close(cold[0], cold[2], rtol=0, atol=1e-6)
    assert (full[0] - full[1]).abs().max() > 1e-3


def test_ode_sampler_super_resolution_conditions_on_test_images():
    x, _ = images(n=5)

    class Data:
        def split(self, name):
            return x.float()

    torch.manual_seed(10)
    fam = MRCNF(n_resolutions=3, **FAST, context=Ctx())
    sampler = ODESampler(temperature=0.0, super_resolution=True, context=Ctx(dataset=Data()))
    rng = PerSampleRNG.for_indices(0, range(4))
    out = sampler.sample(fam, rng)
    idx = torch.tensor([s % 5 for s in rng.seeds])
    coarse = torch.nn.functional.avg_pool2d(x.float()[idx], 4)
    # zero-initialised dynamics and temperature 0: every detail is 0, so x is the coarse image upsampled
    torch.testing.assert_close(out, torch.nn.functional.interpolate(coarse, scale_factor=4), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        sampler.sample(CNF(**FAST, context=Ctx()), rng)
