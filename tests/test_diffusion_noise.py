"""Noise models against independent truth: dense matrices, slogdet, Monte Carlo, the power spectrum
(diffusion-math.md section 9 item 10)."""
import math

import numpy as np
import pytest
import torch

from bench.rng import BatchRNG
from bench_diffusion.noise import GFF, Dense, Diagonal, Isotropic, dense_matrix, gff_filter
from bench_diffusion.testing import build, dataset




def dense_gff(n: int, gamma: float, dc: float) -> np.ndarray:
    """Sigma = W^-1 diag(h^2) W built from the explicit 2-D DFT matrix (independent of the FFT code)."""
    w1 = np.exp(-2j * np.pi * np.outer(np.arange(n), np.arange(n)) / n)
    w = np.kron(w1, w1)  # 2-D DFT on row-major flattened n x n images
    h = gff_filter((n, n), gamma, dc).reshape(-1)
    return w, h


@pytest.mark.parametrize("gamma,dc", [(1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
def test_gff_fft_operators_equal_dense_matrices_8x8(gamma, dc):
    n = 8
    w, h = dense_gff(n, gamma, dc)
    winv = np.conj(w) / n ** 2
    want = {p: winv @ np.diag(h ** p) @ w for p in (1.0, -1.0, 2.0, -2.0)}
    for p in want.values():
        assert np.abs(p.imag).max() < 1e-12  # Real(.) in the thesis is a no-op (section 5.4)
    g = GFF((1, n, n), gamma, dc)
    for op, p in ((g.sqrt, 1.0), (g.inv_sqrt, -1.0), (g.cov, 2.0), (g.inv_cov, -2.0)):
        got = dense_matrix(op, (1, n, n)).numpy()
        np.testing.assert_allclose(got, want[p].real, atol=1e-12)
    sigma = want[2.0].real
    np.testing.assert_allclose(np.diag(sigma), 1.0, atol=1e-12)           # diag(Sigma) = 1 (E12)
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-13)                # symmetric
    assert np.linalg.eigvalsh(sigma).min() > 0                            # DC > 0 keeps it PD (E14)
    sign, logdet = np.linalg.slogdet(sigma)
    assert sign == 1 and abs(logdet - g.logdet()) < 1e-9                  # log det = slogdet (E13)
    r = dense_matrix(g.sqrt, (1, n, n)).numpy()
    np.testing.assert_allclose(r @ r, sigma, atol=1e-12)                  # symmetric root
    np.testing.assert_allclose(r, r.T, atol=1e-13)


def test_gff_thesis_normalisation_erratum_e12():
    """(6.5.4) with sigma_N the std of the complex raw field gives per-pixel variance 1/(4N), not 1."""
    n = 8
    w, h_norm = dense_gff(n, 1.0, 1.0)
    k = np.fft.fftfreq(n) * n
    kx, ky = np.meshgrid(k, k, indexing="ij")
    kabs = np.sqrt(kx ** 2 + ky ** 2)
    kabs[0, 0] = 1.0
    raw = (kabs ** -1.0).reshape(-1)
    sigma_n2 = np.mean(raw ** 2)                       # variance of the complex raw field (step 5)
    sq = np.conj(w) / n ** 2 @ np.diag(raw) @ w / (math.sqrt(2 * n * n) * math.sqrt(sigma_n2))
    # z complex standard normal: Real(A z) = A Re(z) with Re(z) ~ N(0, I/2)
    var_thesis = 0.5 * np.diag((sq.real @ sq.real.T)).mean()
    assert abs(var_thesis - 1 / (4 * n * n)) < 1e-12
    assert abs(np.mean(h_norm ** 2) - 1.0) < 1e-12     # ours: unit variance


def test_gff_power_spectrum_slope_and_sample_covariance():
    n, gamma = 16, 1.25
    g = GFF((1, n, n), gamma, 1.0)
    rng = BatchRNG(0, 20000)
    x = g.sample(rng).double()[:, 0]
    power = (torch.fft.fft2(x).abs() ** 2).mean(0).numpy()
    k = np.fft.fftfreq(n) * n
    kx, ky = np.meshgrid(k, k, indexing="ij")
    kabs = np.sqrt(kx ** 2 + ky ** 2)
    nz = kabs > 0
    slope = np.polyfit(np.log(kabs[nz]), np.log(power[nz]), 1)[0]   # E|FFT g|^2 = N h^2 ~ |k|^-2 gamma
    assert abs(slope - (-2 * gamma)) < 0.02, slope
    # empirical covariance of 20k samples against the dense Sigma (8x8 block of pixels)
    sigma = dense_matrix(g.cov, (1, n, n)).numpy()
    flat = x.reshape(len(x), -1).numpy()
    emp = np.cov(flat[:, :64].T)
    assert np.abs(emp - sigma[:64, :64]).max() < 0.06   # ~ 4 standard errors of a covariance at n=20000


def test_gff_singular_without_dc_and_rank():
    """With a tiny DC the covariance approaches rank N - 1 (the thesis's zeroed DC, E14)."""
    g = GFF((1, 4, 4), 1.0, 1e6)
    s = dense_matrix(g.cov, (1, 4, 4)).numpy()
    eig = np.linalg.eigvalsh(s)
    assert eig[0] / eig[-1] < 1e-10 and eig[1] / eig[-1] > 1e-3
    with pytest.raises(ValueError, match="dc must be > 0"):
        GFF((1, 4, 4), 1.0, 0.0)


def test_gff_per_channel_video_and_vectors():
    g = GFF((3, 8, 8), 1.0, 1.0)
    s = dense_matrix(g.cov, (3, 8, 8)).numpy()
    assert np.abs(s[:64, 64:]).max() < 1e-14                       # channels independent
    np.testing.assert_allclose(s[:64, :64], s[64:128, 64:128], atol=1e-14)
    assert abs(g.logdet() - np.linalg.slogdet(s)[1]) < 1e-8
    v = GFF((2, 1, 4, 4), 1.0, 1.0)                                 # video: per frame
    sv = dense_matrix(v.cov, (2, 1, 4, 4)).numpy()
    assert np.abs(sv[:16, 16:]).max() < 1e-14
    d = GFF((6,), 1.5, 0.5)                                         # vectors: a 1-D periodic field
    sd = dense_matrix(d.cov, (6,)).numpy()
    np.testing.assert_allclose(np.diag(sd), 1.0, atol=1e-12)
    np.testing.assert_allclose(sd[0, 1], sd[2, 3], atol=1e-14)      # circulant
    assert abs(d.logdet() - np.linalg.slogdet(sd)[1]) < 1e-10
    np.testing.assert_allclose(dense_matrix(GFF((2,), 1.0, 1.0).cov, (2,)).numpy(), np.eye(2), atol=1e-14)


@pytest.mark.parametrize("gamma,dc", [(1.0, 1.0), (2.0, 0.5)])
def test_gff_space_time_equals_the_dense_3d_dft_per_channel(gamma, dc):
    """field: space_time on a (T, C, H, W) clip: per channel, Sigma = W3^-1 diag(h^2) W3 with W3 the
    explicit 3-D DFT over (T, H, W) (kron of 1-D DFT matrices, independent of the FFT code) and h the
    3-D filter; channels independent; log det against slogdet; correlated across frames."""
    t, c, n = 3, 2, 4
    dft = [np.exp(-2j * np.pi * np.outer(np.arange(m), np.arange(m)) / m) for m in (t, n, n)]
    w = np.kron(np.kron(dft[0], dft[1]), dft[2])
    h = gff_filter((t, n, n), gamma, dc).reshape(-1)
    sigma_field = (np.conj(w) / (t * n * n) @ np.diag(h ** 2) @ w).real
    g = GFF((t, c, n, n), gamma, dc, field="space_time")
    got = dense_matrix(g.cov, (t, c, n, n)).numpy()
    # reorder the flattened (T, C, H, W) index to (C, T, H, W): block diagonal over channels
    perm = np.arange(t * c * n * n).reshape(t, c, n, n).transpose(1, 0, 2, 3).reshape(-1)
    by_channel = got[np.ix_(perm, perm)]
    f = t * n * n
    for ch in range(c):
        np.testing.assert_allclose(by_channel[ch * f:(ch + 1) * f, ch * f:(ch + 1) * f], sigma_field, atol=1e-12)
    assert np.abs(by_channel[:f, f:]).max() < 1e-14                  # channels independent
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)       # diag(Sigma) = 1 (E12)
    assert abs(g.logdet() - np.linalg.slogdet(got)[1]) < 1e-8
    r = dense_matrix(g.sqrt, (t, c, n, n)).numpy()
    np.testing.assert_allclose(r @ r, got, atol=1e-12)
    np.testing.assert_allclose(dense_matrix(g.inv_sqrt, (t, c, n, n)).numpy() @ r, np.eye(len(r)), atol=1e-9)
    # the same pixel in frames 1 and 2 is correlated (space only: exactly independent)
    assert got[0, c * n * n] > 0.05
    assert dense_matrix(GFF((t, c, n, n), gamma, dc).cov, (t, c, n, n)).numpy()[0, c * n * n] == 0
    with pytest.raises(ValueError, match="space_time needs video"):
        GFF((c, n, n), gamma, dc, field="space_time")


def test_dense_and_diagonal_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    cov = a @ a.T + 0.5 * np.eye(5)
    n = Dense((5,), cov)
    lam, vec = np.linalg.eigh(cov)
    root = vec @ np.diag(np.sqrt(lam)) @ vec.T
    np.testing.assert_allclose(dense_matrix(n.sqrt, (5,)).numpy(), root, atol=1e-12)
    np.testing.assert_allclose(dense_matrix(n.inv_sqrt, (5,)).numpy(), np.linalg.inv(root), atol=1e-10)
    np.testing.assert_allclose(dense_matrix(n.cov, (5,)).numpy(), cov, atol=1e-12)
    np.testing.assert_allclose(dense_matrix(n.inv_cov, (5,)).numpy(), np.linalg.inv(cov), atol=1e-10)
    assert abs(n.logdet() - np.linalg.slogdet(cov)[1]) < 1e-10
    x = torch.tensor(rng.standard_normal((7, 5)))
    from scipy.stats import multivariate_normal
    np.testing.assert_allclose(n.log_prob(x, 2.0).numpy(),
                               multivariate_normal(np.zeros(5), 2.0 * cov).logpdf(x.numpy()), atol=1e-10)
    dg = Diagonal((2, 2), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(dense_matrix(dg.cov, (2, 2)).numpy(), np.diag([1.0, 2, 3, 4]))
    assert abs(dg.logdet() - math.log(24)) < 1e-12
    with pytest.raises(ValueError, match="positive definite"):
        Dense((2,), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="must be 3x3"):
        Dense((3,), np.eye(2))


def test_isotropic_is_the_identity_object():
    iso = Isotropic((3, 4))
    x = torch.randn(2, 3, 4)
    for op in (iso.sqrt, iso.inv_sqrt, iso.cov, iso.inv_cov):
        assert op(x) is x
    assert iso.logdet() == 0.0


def test_registered_factories_validate_parameters():
    data = dataset("gaussian", dim=3, n_train=100, n_test=10)
    n = build("noise", {"name": "anisotropic", "rho": 0.3}, data)
    s = dense_matrix(n.cov, (3,)).numpy()
    np.testing.assert_allclose(s, 0.7 * np.eye(3) + 0.3, atol=1e-12)
    with pytest.raises(Exception, match="rho"):
        build("noise", {"name": "anisotropic", "rho": -0.6}, data)   # not PD in 3 dims
    with pytest.raises(Exception):
        build("noise", {"name": "gff", "gamma": -1.0}, data)          # pydantic: ge=0
    with pytest.raises(Exception):
        build("noise", {"name": "gff", "dc": 0.0}, data)
    with pytest.raises(Exception, match="unexpected|extra|not permitted"):
        build("noise", {"name": "gff", "gama": 1.0}, data)
    g = build("noise", {"name": "gff", "gamma": 2.0}, dataset("gaussian_image", n_train=10, n_test=10))
    assert g.shape == (1, 8, 8) and g.gamma == 2.0
