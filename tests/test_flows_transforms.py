"""Multi-resolution maps and the logit pre-transform against dense linear algebra (flows-math.md 1.7, 1.8, 1.11)."""
import math

import numpy as np
import pytest
import torch

from bench_flows.nets import ODEConvNet, odeconv_param_count
from bench_flows.transforms import (C_UNIMODULAR, Logit, combine2d, compose, decompose, multires_stds,
                                    split2d)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def dense_map(fn, shape):
    """The matrix of a linear map on images of ``shape`` (columns = images of basis vectors)."""
    n = int(np.prod(shape))
    cols = []
    for i in range(n):
        e = torch.zeros(n)
        e[i] = 1
        out = fn(e.view(1, *shape))
        cols.append(torch.cat([o.flatten(1) for o in out], 1)[0])
    return torch.stack(cols, 1)


@pytest.mark.parametrize("transform", ["haar", "unimodular"])
def test_split_inverts_exactly(transform):
    x = torch.randn(5, 2, 8, 8)
    y, xbar, _ = split2d(x, transform)
    assert y.shape == (5, 6, 4, 4) and xbar.shape == (5, 2, 4, 4)
    torch.testing.assert_close(combine2d(y, xbar, transform), x, rtol=0, atol=1e-12)
    details, coarse, _ = decompose(x, 3, transform)
    torch.testing.assert_close(compose(details, coarse, transform), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(xbar, torch.nn.functional.avg_pool2d(x, 2))


@pytest.mark.parametrize("transform,patch", [("haar", math.log(0.5)), ("unimodular", 0.0)])
def test_logdet_equals_slogdet_of_dense_map(transform, patch):
    shape = (2, 4, 4)
    mat = dense_map(lambda v: split2d(v, transform)[:2], shape)
    sign, logabs = torch.linalg.slogdet(mat)
    _, _, ld = split2d(torch.zeros(1, *shape), transform)
    assert float(ld) == pytest.approx(float(logabs), abs=1e-10)
    assert float(ld) == pytest.approx(2 * 2 * 2 * patch, abs=1e-12)  # dim(x_{s+1}) = 8 patches*channels
    # three resolutions: sum of log dets = slogdet of the composed dense map
    shape = (1, 8, 8)
    mat3 = dense_map(lambda v: (*decompose(v, 3, transform)[0], decompose(v, 3, transform)[1]), shape)
    _, logabs3 = torch.linalg.slogdet(mat3)
    assert float(decompose(torch.zeros(1, *shape), 3, transform)[2]) == pytest.approx(float(logabs3), abs=1e-9)


def test_patch_matrices_match_reconstruction():
    """The 4x4 inverse matrices of eq. 4.3.2 / 4.3.4 as reconstructed in flows-math.md 1.7."""
    c = 2 ** (2 / 3)
    haar = np.array([[.5, .5, -.5, -.5], [.5, -.5, .5, -.5], [.5, -.5, -.5, .5], [.25] * 4])
    uni = np.array([[1 / c, 1 / c, -1 / c, -1 / c], [1 / c, -1 / c, 1 / c, -1 / c], [1 / c, -1 / c, -1 / c, 1 / c],
                    [.25] * 4])
    for name, ref in (("haar", haar), ("unimodular", uni)):
        mat = dense_map(lambda v: split2d(v, name)[:2], (1, 2, 2)).numpy()
        np.testing.assert_allclose(mat, ref, atol=1e-12)
    assert abs(np.linalg.det(uni) - 1) < 1e-12


@pytest.mark.parametrize("transform", ["haar", "unimodular"])
def test_multires_noise_stds_match_covariance_of_split_white_noise(transform):
    """White noise at the finest level split by the map: the covariance of each part (dense algebra)."""
    side, levels = 8, 3
    mat = dense_map(lambda v: (*decompose(v, levels, transform)[0], decompose(v, levels, transform)[1]),
                    (1, side, side))
    cov_diag = torch.diagonal(mat @ mat.T)
    assert torch.allclose(mat @ mat.T, torch.diag(cov_diag), atol=1e-12)  # parts are independent
    stds = multires_stds(side, levels, transform, reference=side)
    sizes = [3 * 16, 3 * 4, 4]
    expect = torch.cat([torch.full((n,), s ** 2) for n, s in zip(sizes, stds)])
    torch.testing.assert_close(cov_diag, expect)
    if transform == "unimodular":
        assert stds[0] ** 2 == pytest.approx(C_UNIMODULAR)  # section 1.11: c sigma^2


def test_logit_logdet_is_log_abs_jacobian():
    logit = Logit(0.05)
    x = torch.rand(3, 6) * 2 - 1
    v, ld = logit.forward(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: logit.forward(z[None])[0][0], x[i])
        assert float(ld[i]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-10)
    torch.testing.assert_close(logit.inverse(v), x)


def test_odeconv_parameter_count_closed_form():
    """flows-math.md 2.2: grayscale blocks with 64 hidden: 76,810 (coarse) and 79,710 (fine)."""
    coarse = ODEConvNet(1, (64, 64, 64))
    fine = ODEConvNet(3, (64, 64, 64), cond_channels=1)
    assert sum(p.numel() for p in coarse.parameters()) == 76810 == odeconv_param_count(1, 0, (64, 64, 64))
    assert sum(p.numel() for p in fine.parameters()) == 79710 == odeconv_param_count(3, 1, (64, 64, 64))
    assert odeconv_param_count(3, 0, (64,) * 3) == 79134 and odeconv_param_count(9, 3, (64,) * 3) == 87834
