"""bench.ode (the one ODE solve and divergence) against torchdiffeq called directly, closed forms and
autograd Jacobians; bench.likelihood's quantised-data map."""
import math

import pytest
import torch
from torchdiffeq import odeint

from bench.likelihood import levels_from_model, model_from_levels, quantize
from bench.ode import ADAPTIVE, FIXED_GRID, divergence, is_fixed_grid, solve_ode

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)


def linear(t, y):
    return y @ A.T


def test_solve_ode_is_torchdiffeq_and_matches_the_closed_form():
    y0 = torch.tensor([[1.0, -2.0], [0.3, 0.4]], dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * float(s)).T for s in t])
    for method, kw, ref_kw, tol in [("rk4", {}, {}, 5e-3),  # 4 steps of 0.5
                                    ("rk4", {"step_size": 0.05}, {"options": {"step_size": 0.05}}, 1e-6),
                                    ("dopri5", {"atol": 1e-9, "rtol": 1e-9}, {"atol": 1e-9, "rtol": 1e-9}, 1e-7)]:
        ours = solve_ode(linear, y0, t, method, **kw)
        ref = odeint(linear, y0, t, method=method, **ref_kw)
        assert torch.equal(ours, ref), method
        assert float((ours - exact).abs().max()) < tol, method
    landed = solve_ode(linear, y0, t, "dopri5", atol=1e-9, rtol=1e-9, land_on_times=True)
    ref = odeint(linear, y0, t, method="dopri5", atol=1e-9, rtol=1e-9, options={"step_t": t[1:]})
    assert torch.equal(landed, ref) and float((landed - exact).abs().max()) < 1e-7


def test_tuple_state_error_control_and_adjoint():
    """``controlled=1`` leaves the second state out of step control (more steps would be taken if
    a fast-varying second state were controlled); the adjoint gives the same gradient as backprop."""
    calls = {"n": 0}

    def func(t, state):
        calls["n"] += 1
        y, _ = state
        return y @ A.T, 20 * torch.cos(20 * t) * torch.ones(len(y), dtype=y.dtype)

    y0 = (torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solve_ode(func, y0, t, "dopri5", atol=1e-6, rtol=1e-6)
    both = calls["n"]
    calls["n"] = 0
    out = solve_ode(func, y0, t, "dopri5", atol=1e-6, rtol=1e-6, controlled=1)
    assert calls["n"] < both / 2
    assert float((out[0][-1] - y0[0] @ torch.linalg.matrix_exp(A).T).abs().max()) < 1e-5

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(A.clone())

        def forward(self, t, y):
            return y @ self.a.T

    grads = []
    for adjoint in (False, True):
        m = Lin()
        solve_ode(m, torch.ones(3, 2, dtype=torch.float64), t, "dopri5", atol=1e-8, rtol=1e-8,
                  adjoint=adjoint)[-1].sum().backward()
        grads.append(m.a.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_solver_table():
    assert set(FIXED_GRID).isdisjoint(ADAPTIVE)
    assert is_fixed_grid("rk4") and not is_fixed_grid("dopri5")
    with pytest.raises(ValueError, match="unknown ODE solver 'rk5'"):
        is_fixed_grid("rk5")


def field(y):
    """A nonlinear map whose rows are independent: f(y) = tanh(y W^T) * y + sin(y) (D = 4)."""
    w = torch.arange(16, dtype=torch.float64).reshape(4, 4) / 10 - 0.7
    return torch.tanh(y @ w.T) * y + torch.sin(y)


def jacobians(y):
    return torch.stack([torch.autograd.functional.jacobian(lambda v: field(v[None])[0], row) for row in y])


@pytest.mark.parametrize("batched", [True, False])
def test_exact_divergence_is_the_trace_of_the_autograd_jacobian(batched):
    y = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    jac = jacobians(y.detach())
    div, frob = divergence(field(y), y, batched=batched, frobenius=not batched)
    assert torch.allclose(div, torch.diagonal(jac, dim1=1, dim2=2).sum(1), atol=1e-12)
    if not batched:
        assert torch.allclose(frob, jac.pow(2).sum((1, 2)) / 4, atol=1e-12)
    # create_graph: the divergence is differentiable (its gradient is checked against finite differences)
    y2 = y.detach().clone().requires_grad_(True)
    d2, _ = divergence(field(y2), y2, create_graph=True)
    (g,) = torch.autograd.grad(d2.sum(), y2)
    h = 1e-6
    e = torch.zeros_like(y2)
    e[0, 1] = h
    fd = (torch.diagonal(jacobians(y.detach() + e), dim1=1, dim2=2).sum()
          - torch.diagonal(jacobians(y.detach() - e), dim1=1, dim2=2).sum()) / (2 * h)
    assert abs(float(g[0, 1] - fd)) < 1e-6


def test_hutchinson_divergence_is_z_J_z_and_unbiased():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_(True)
    jac = jacobians(y.detach())
    z = torch.randn(5, 4, dtype=torch.float64, generator=g)
    div, jz = divergence(field(y), y, z, frobenius=True)
    assert torch.allclose(div, torch.einsum("bi,bij,bj->b", z, jac, z), atol=1e-12)
    assert torch.allclose(jz, torch.einsum("bi,bij->bj", z, jac).pow(2).mean(1), atol=1e-12)
    n = 20000
    yy = y.detach()[:1].expand(n, 4).clone().requires_grad_(True)
    zz = torch.randint(0, 2, (n, 4), generator=g).to(torch.float64) * 2 - 1  # Rademacher
    est, _ = divergence(field(yy), yy, zz)
    tr = float(torch.diagonal(jac[0]).sum())
    assert abs(float(est.mean()) - tr) < 4 * float(est.std()) / math.sqrt(n)


def test_quantised_data_map():
    L = 17
    k = torch.arange(L, dtype=torch.float64)
    x = model_from_levels(k, L)
    assert float(x[0]) == -1.0 and float(x[-1]) == 1.0 and float(x[8]) == 0.0
    assert torch.allclose(x[1:] - x[:-1], torch.full((L - 1,), 2 / (L - 1), dtype=torch.float64))
    assert torch.equal(levels_from_model(x, L), k)
    noisy = x + (torch.rand(L, dtype=torch.float64) - 0.5) * 0.9 * 2 / (L - 1)
    assert torch.equal(quantize(noisy, L), x)
    assert torch.equal(quantize(torch.tensor([-3.0, 3.0]), L), torch.tensor([-1.0, 1.0]))
