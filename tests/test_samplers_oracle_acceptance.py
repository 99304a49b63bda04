"""Acceptance of suites/samplers-oracle.yaml, the oracle leaderboard (slow: the whole suite at full size,
~33 minutes with 2 workers on a shared 2-core machine).

Every case must finish ok, and at its largest NFE no sampler may reject exact sampling at the 0.1%
level: ``moments_mean_p``, ``moments_cov_p`` and ``moments_var_p`` (bench_metrics ``moments``, exact
chi-square tests against the data's stated mean and covariance) all >= 0.001. A "sampler" is one
(dataset, family, sampler name, ODE method) group of cases; its largest NFE is its last rung.
``largest_nfe_rejections`` is also what docs/results.md section 1 reads from a finished run.

Samplers that do not claim convergence at their largest NFE, with the reason measured in
docs/results.md section 1, are listed in NOT_CONVERGED and exempt (their rejection is expected).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
LEVEL = 1e-3
P_KEYS = ("moments_mean_p", "moments_cov_p", "moments_var_p")
# (dataset, family, sampler, method) -> why it does not converge at the suite's largest NFE
_ANCESTRAL = ("discrete ancestral kernel with beta_tilde drops c0^2 Var(x0 | x_t): variance x0.981 at T = 1000 "
              "(exact recursion), the largest NFE possible")
_EULER_VE = "first-order Euler on the VE PF-ODE: variance x0.95 at 1000 steps"
_SMAX10 = ("diagnostic family: the prior N(0, 10^2 I) ignores the data's mean and variance, so no NFE "
           "converges (mean p ~ 1e-11; closed-form W2 0.12 at 101 NFE)")
NOT_CONVERGED = {
    ("gaussian_image8", "oracle_vp", "ancestral", None): _ANCESTRAL,
    ("gaussian_image8", "oracle_vp_gff", "ancestral", None): _ANCESTRAL,
    ("gaussian_image8", "oracle_ve", "pf_ode", "euler"): _EULER_VE,
    ("gaussian_image8", "oracle_ve_gff", "pf_ode", "euler"): _EULER_VE,
    ("gaussian_image8", "oracle_edm_smax10", "edm_euler", None): _SMAX10,
    ("gaussian_image8", "oracle_edm_smax10", "edm_heun", None): _SMAX10,
}


def group_of(record: dict) -> tuple:
    s = record["config"]["sampler"]
    return record["labels"]["dataset"], record["labels"]["family"], s["name"], s.get("method")


def largest_nfe(records: list[dict]) -> dict[tuple, dict]:
    """The record with the largest NFE of every (dataset, family, sampler, method) group."""
    best: dict[tuple, dict] = {}
    for r in records:
        g = group_of(r)
        if g not in best or r["metrics"]["nfe"] > best[g]["metrics"]["nfe"]:
            best[g] = r
    return best


def largest_nfe_rejections(records: list[dict], level: float = LEVEL, exempt=()) -> dict[str, dict[str, float]]:
    """case id -> the p-values below ``level``, over the largest-NFE case of each sampler whose
    group (dataset, family, sampler, method) is not in ``exempt``."""
    out = {}
    for g, r in largest_nfe(records).items():
        if g in exempt:
            continue
        low = {k: r["metrics"][k] for k in P_KEYS if r["metrics"][k] < level}
        if low:
            out[r["case_id"]] = low
    return out


def test_acceptance_logic_picks_the_largest_nfe_and_flags_low_p():
    def rec(sampler, nfe, p, method=None):
        return {"case_id": f"{sampler}{nfe}", "labels": {"dataset": "d", "family": "f"},
                "config": {"sampler": {"name": sampler, "method": method}},
                "metrics": {"nfe": nfe, **{k: p for k in P_KEYS}}}
    records = [rec("cas", 10, 1e-9), rec("cas", 1000, 0.4), rec("ald", 101, 0.5), rec("ald", 5001, 1e-4),
               rec("pf_ode", 11, 1e-9, "euler"), rec("pf_ode", 1001, 0.2, "euler"), rec("pf_ode", 80, 1e-5, "rk4")]
    assert set(largest_nfe_rejections(records)) == {"ald5001", "pf_ode80"}
    assert set(largest_nfe_rejections(records, exempt={("d", "f", "ald", None)})) == {"pf_ode80"}


@pytest.mark.acceptance
def test_samplers_oracle_acceptance(workdir):
    result = CliRunner().invoke(app, ["run", str(ROOT / "suites" / "samplers-oracle.yaml"), "-q", "--threads", "1",
                                      "--executor", "process", "--workers", "2"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    failed = {r["case_id"]: r.get("error") for r in records if r["status"] != "ok"}
    assert result.exit_code == 0 and not failed, (result.output[-3000:], failed)
    assert len(records) == 389
    assert not largest_nfe_rejections(records, exempt=NOT_CONVERGED)
    assert set(NOT_CONVERGED) <= set(largest_nfe(records))  # an exemption never outlives its cases


# ------------------------------------------------ docs/results.md section 1: EDM Heun vs Euler, closed form

def _closed_form_gain(lam, sigmas, heun):
    """Per eigen-direction (eigenvalue ``lam`` of the data covariance, isotropic noise) gain of the
    EDM Euler / Heun recursion on x - m: D(x; s) = m + lam / (lam + s^2) (x - m), so the slope
    (x - D) / s is s / (lam + s^2) (x - m) and each step is a scalar map (Karras et al. 2022, Alg. 2)."""
    g = np.ones_like(lam)
    for s, sn in zip(sigmas[:-1], sigmas[1:]):
        d = s / (lam + s * s)
        if heun and sn > 0:
            d2 = sn / (lam + sn * sn) * (1 + (sn - s) * d)
            g = g * (1 + (sn - s) * 0.5 * (d + d2))
        else:
            g = g * (1 + (sn - s) * d)
    return g


def test_edm_samplers_are_the_closed_form_linear_maps_and_heun_trails_euler_below_30_nfe():
    """edm_euler / edm_heun on oracle_edm (1x8x8 Gaussian, isotropic noise) are affine maps; their
    matrix equals the closed-form per-eigendirection gains, and the exact W2 to the data that follows
    puts Heun behind Euler at 5, 11 and 21 NFE and ahead at 51 (sigma_max = 80), as measured."""
    from bench_diffusion.samplers.edm import EDMEuler, EDMHeun, edm_sigmas
    from bench_diffusion.testing import build, dataset

    data = dataset("gaussian_image", size=8, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_edm"}, data)
    _, means, covs = fam.mixture
    m, c = np.asarray(means[0], dtype=np.float64), np.asarray(covs[0], dtype=np.float64)
    lam, u = np.linalg.eigh(c)
    d = len(lam)
    probe = torch.cat([torch.zeros(1, d), torch.eye(d)]).reshape(d + 1, *fam.shape)  # origin + basis
    w2 = {}
    for cls, heun in ((EDMEuler, False), (EDMHeun, True)):
        for nfe in (5, 11, 21, 51):
            steps = (nfe + 1) // 2 if heun else nfe
            sampler = cls(steps=steps)
            sigmas = edm_sigmas(fam, steps)
            with torch.no_grad():
                out = sampler.solve(fam, probe.clone(), sigmas).reshape(d + 1, d).double().numpy()
            a = (out[1:] - out[0]).T  # the linear part: out(x) = out(0) + A x
            g = _closed_form_gain(lam, sigmas, heun)
            np.testing.assert_allclose(u.T @ a @ u, np.diag(g), atol=1e-3 * np.abs(g).max() + 1e-6)
            np.testing.assert_allclose(out[0], m - u @ (g * (u.T @ m)), atol=1e-4)  # x = 0 maps to m - g m
            sd = sigmas[0] * np.abs(g)  # prior N(0, sigma_0^2 I): output N(m - g m, U diag(sd^2) U^T)
            w2[heun, nfe] = np.sqrt(((sd - np.sqrt(lam)) ** 2).sum() + ((g * (u.T @ m)) ** 2).sum())
    assert all(w2[True, n] > w2[False, n] for n in (5, 11, 21)) and w2[True, 51] < w2[False, 51], w2
