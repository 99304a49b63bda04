"""ODE solving, the CNF likelihood and its gradients against closed forms (flows-math.md 1.1-1.6)."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from bench.protocols import DataInfo
from bench.rng import BatchRNG
from bench_flows.cnf import CNF
from bench_flows.cnf_block import AugmentedDynamics, CNFBlock
from bench_flows.level_flow import LevelFlow
from bench_flows.nets import ODEMLP
from bench_flows.odesolve import SolverConfig, solve




TIGHT = SolverConfig("dopri5", atol=1e-10, rtol=1e-10)


class Ctx:
    def __init__(self, shape, levels=None):
        self.data = DataInfo("t", tuple(shape), "points" if len(shape) == 1 else "image", levels)


class Linear(nn.Module):
    """f(v, t) = A v."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t, v, cond=None):
        return v @ self.a.T


def test_thesis_euler_example_corrected():
    """dx/dt = 2xt, x(0) = 3: Euler h = 0.25 gives 5.80078125, the exact value is 3e (erratum 1)."""
    f = lambda t, x: 2 * x * t  # noqa: E731
    x0, t = torch.tensor([3.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert float(solve(f, x0, t, SolverConfig("euler", step_size=0.25))[-1]) == 5.80078125
    assert float(solve(f, x0, t, TIGHT)[-1]) == pytest.approx(3 * math.e, abs=1e-7)
    # a vector of output times (section 1.2): x(t) = 3 exp(t^2)
    ts = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(solve(f, x0, ts, TIGHT)[:, 0].numpy(), 3 * np.exp(ts.numpy() ** 2), rtol=1e-8)


def test_linear_dynamics_has_analytic_likelihood():
    """dv/dt = A v: z = exp(A T) x and log p(x) = log N(z; 0, I) + tr(A) T (corrected sign)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    T = 0.8
    flow = LevelFlow((3,), [4], blocks=1, exact_trace=True, time_length=T).double()
    flow.blocks[0].dynamics.net = Linear(a)
    logp, _, _ = flow.log_prob(x, None, None, TIGHT, regularize=False)
    z = x.numpy() @ scipy.linalg.expm(a.numpy() * T).T
    expect = -0.5 * (z ** 2).sum(1) - 1.5 * math.log(2 * math.pi) + np.trace(a.numpy()) * T
    np.testing.assert_allclose(logp.detach().numpy(), expect, rtol=1e-8)
    # Hutchinson with the probe fixed within the solve integrates eps^T A eps exactly
    hflow = LevelFlow((3,), [4], blocks=1, exact_trace=False, time_length=T).double()
    hflow.blocks[0].dynamics.net = Linear(a)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    logp_h, _, _ = hflow.log_prob(x, None, lambda shape: eps, TIGHT, regularize=False)
    quad = np.einsum("bi,ij,bj->b", eps.numpy(), a.numpy(), eps.numpy())
    np.testing.assert_allclose(logp_h.detach().numpy(), expect - np.trace(a.numpy()) * T + quad * T, rtol=1e-8)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_for_the_exact_trace(probe):
    torch.manual_seed(1)
    net = ODEMLP(5, (16, 16), zero_last=False).double()
    v = torch.randn(1, 5, dtype=torch.float64).expand(20000, 5).contiguous()
    t = torch.tensor(0.3, dtype=torch.float64)
    exact = AugmentedDynamics(net, exact_trace=True)
    with torch.no_grad():
        true_neg_div = exact(t, (v, None))[1][0]
    hutch = AugmentedDynamics(net, exact_trace=False)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(20000, 5, generator=g, dtype=torch.float64)
    if probe == "rademacher":
        eps = eps.sign()
    hutch.probe = eps
    with torch.no_grad():
        est = hutch(t, (v, None))[1]
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 1e-3  # a real estimator, not the exact trace in disguise
    assert abs(float(est.mean() - true_neg_div)) < 5 * float(se)


def _cnf_points(adjoint, divergence):
    torch.manual_seed(3)
    fam = CNF(hidden=[16, 16], zero_last=False, divergence=divergence, adjoint=adjoint, solver="dopri5",
              atol=1e-9, rtol=1e-9, kinetic_weight=0.1, jacobian_weight=0.1, context=Ctx((2,))).double()
    return fam


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(divergence):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        fam = _cnf_points(adjoint, divergence)
        loss = fam.loss(x, BatchRNG(5, 8))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in fam.parameters()]))
        assert fam.train_nfe[0] == 1 and fam.train_nfe[1] > 0 and fam.train_nfe[2] > 0
    assert grads[0].abs().max() > 1e-4
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_block_inverse_round_trip():
    torch.manual_seed(6)
    block = CNFBlock(ODEMLP(3, (16,), zero_last=False), exact_trace=True).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    z, _, _, _ = block(x, None, None, TIGHT)
    assert (z - x).abs().max() > 1e-2
    torch.testing.assert_close(block.inverse(z.detach(), None, TIGHT), x, rtol=0, atol=1e-7)
