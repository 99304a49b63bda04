"""bench_diffusion as a plugin: registration metadata, the two suites, parameter validation, the
documented third-party sampler interface, and a small end-to-end run through the runner (training,
EMA weights, sampling, metrics, provenance artifacts)."""
import json
from pathlib import Path

import numpy as np
import pytest

from bench.plugins import get_manager
from bench.rng import BatchRNG
from bench.suite import load_suite
from bench_diffusion.testing import build, dataset



ROOT = Path(__file__).resolve().parents[1]

FAMILIES = ["ddpm", "ni_ddpm", "smld", "ni_smld", "vp_sde", "ve_sde", "oracle", "oracle_vp", "oracle_ve"]
SAMPLERS = ["ancestral", "ddim", "ald", "cas", "euler_maruyama", "pc", "pf_ode"]


def test_registered_components_and_metadata():
    regs = get_manager().registries
    for name in ("isotropic", "gff", "anisotropic", "diagonal"):
        assert name in regs.noise
    for name in ("linear", "cosine", "quadratic", "sigmoid", "geometric", "karras"):
        assert name in regs.schedule
    for name in FAMILIES:
        meta = regs.family.entry(name).meta
        assert {"diffusion", "score", "eps", "likelihood"} <= set(meta["provides"])
        assert meta["components"] == {"noise": "noise", "schedule": "schedule"}
    assert "ve" not in regs.family.entry("ddpm").meta["provides"]
    assert "vp" not in regs.family.entry("oracle_ve").meta["provides"]
    assert regs.family.entry("oracle").meta["trainable"] is False
    want = {"ancestral": {"vp"}, "ddim": {"vp"}, "ald": {"ve", "score"}, "cas": {"ve", "score"},
            "euler_maruyama": {"score"}, "pc": {"score"}, "pf_ode": {"score"}}
    for name in SAMPLERS:
        assert set(regs.sampler.entry(name).meta["requires"]) == want[name]
    assert regs.dataset.entry("gaussian_image").meta["modality"] == "image"


@pytest.mark.parametrize("suite,n_min", [("samplers-oracle.yaml", 100), ("diffusion.yaml", 100)])
def test_suites_expand_and_prune(suite, n_min):
    m = get_manager()
    s = load_suite(ROOT / "suites" / suite, m.registries, m.versions())
    assert len(s.cases) >= n_min
    for case in s.cases:
        fam = m.registries.family.entry(case.family["name"]).meta["provides"]
        if case.sampler is not None:
            need = m.registries.sampler.entry(case.sampler["name"]).meta["requires"]
            assert set(need) <= set(fam)
    names = {(c.family.get("id"), c.sampler["name"]) for c in s.cases}
    assert not any(f in ("oracle_ve", "smld", "ve_sde") and smp in ("ddim", "ancestral") for f, smp in names)


def test_bad_parameters_are_clear_errors():
    data = dataset("gaussian", dim=2, n_train=50, n_test=10)
    regs = get_manager().registries
    import pydantic
    for kind, name, params in (("family", "ddpm", {"T": 1}), ("family", "ddpm", {"prediction": "score"}),
                               ("family", "smld", {"weighting": "snr"}), ("family", "vp_sde", {"t_min": 0.0}),
                               ("family", "oracle", {"process": "subvp"}), ("sampler", "pc", {"snr": -1.0}),
                               ("sampler", "ald", {"n_steps_each": 0}), ("sampler", "ancestral", {"variance": "learned"}),
                               ("schedule", "karras", {"rho": 0}), ("noise", "diagonal", {})):
        with pytest.raises(pydantic.ValidationError):
            regs[kind].validate(name, params)
    with pytest.raises(ValueError, match="needs ground truth"):
        build("family", "oracle", dataset("toy2d/moons", n_train=50, n_test=10))
    with pytest.raises(ValueError, match="VE process"):
        build("family", {"name": "ddpm", "network": "mlp"}, data).__class__(
            build("family", "oracle_vp", data).process, None, conditional=False)
    with pytest.raises(ValueError, match="fixed-step solver"):
        build("sampler", {"name": "pf_ode", "method": "euler", "steps": None}, data)


class Midpoint:
    """The example sampler of docs/diffusion.md ("Writing a sampler"), verbatim."""

    requires = frozenset({"vp"})

    def __init__(self, steps: int = 50):
        self.steps = steps

    def sample(self, family, rng):
        p = family.process
        times = p.sampling_times(self.steps, "trailing")
        x = p.prior_sample(rng, times[0])
        for i, t in enumerate(times):
            x0 = family.x0(x, t, family.eps(x, t))
            if i + 1 == len(times):
                return x0
            a_s, s_s = (float(v) for v in p.alpha_sigma(times[i + 1]))
            x = a_s * x0 + s_s * family.noise.sqrt(family.eps_from_x0(x, t, x0))


def test_documented_sampler_interface_works_on_the_oracle():
    data = dataset("gaussian_image", size=4, n_train=100, n_test=10)
    fam = build("family", {"name": "oracle_vp", "noise": "gff"}, data)
    x = Midpoint(50).sample(fam, BatchRNG(0, 2000)).reshape(2000, -1).double()
    m, c = np.array(data.info.params["mean"]), np.array(data.info.params["cov"])
    assert np.abs(x.mean(0).numpy() - m).max() < 0.05
    assert np.linalg.norm(np.cov(x.numpy().T) - c) / np.linalg.norm(c) < 0.15


def test_end_to_end_run_trains_samples_and_logs_provenance(tmp_path):
    from bench.session import RunOptions, run_suite

    suite = tmp_path / "tiny.yaml"
    suite.write_text("""
name: tiny-diffusion
seed: 0
defaults:
  train: {steps: 150, batch_size: 128, lr: 2.0e-3, ema: 0.99}
  eval: {num_samples: 300, batch_size: 150, grid: 0}
matrix:
  dataset: [toy2d/8gaussians]
  family:
    - {name: ddpm, T: 100, network: {name: mlp, hidden: 64, layers: 2}, id: ddpm}
    - {name: smld, L: 50, conditional: false, network: {name: mlp, hidden: 64, layers: 2}, id: smld_uncond}
  sampler:
    - {name: ancestral, steps: 20}
    - {name: cas, steps: 20}
    - {name: pf_ode, method: euler, steps: 10}
metrics: [swd]
""")
    m = get_manager()
    s = load_suite(suite, m.registries, m.versions())
    assert len(s.cases) == 4  # ancestral needs vp, cas needs ve
    code = run_suite(s, m, RunOptions(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", results_root=str(tmp_path / "res"),
                                      store=str(tmp_path / "store"), quiet=True))
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "res").glob("tiny-diffusion/*/cases/*/record.json"))]
    assert code == 0 and len(records) == 4
    assert [r["status"] for r in records] == ["ok"] * 4, [r.get("error") for r in records]
    for r in records:
        assert r["metrics"]["nfe"] >= 10 and np.isfinite(r["metrics"]["swd"])
        case = Path(r["case_dir"])
        fam = json.loads((case / "family.json").read_text())
        assert fam["process"]["noise"]["name"] == "isotropic"
        assert fam["process"]["schedule"]["sigma_max"] != "auto" if fam["process"]["kind"] == "ve" else True
        assert any(n.startswith(r["config"]["sampler"]["name"]) for n in r["notes"])
    trained = [r for r in records if r["trained"]]
    assert len(trained) == 2  # train once, sample many
    # an untrained net (zero output: eps_hat = 0) leaves the prior's scale (VP: x_T / alpha_T, swd > 50;
    # VE: N(0, sigma_max^2), swd ~ sigma_max); 150 steps of training already get far closer
    swd = {(r["config"]["family"]["id"], r["config"]["sampler"]["name"]): r["metrics"]["swd"] for r in records}
    assert swd["ddpm", "pf_ode"] < 1.0 and swd["ddpm", "ancestral"] < 1.0, swd
    assert swd["smld_uncond", "cas"] < 2.0, swd


@pytest.mark.parametrize("family, noise", [("ddpm", "isotropic"), ("ni_ddpm", "gff"), ("smld", "isotropic")])
def test_python_float_times_take_the_same_arithmetic_as_tensor_times(family, noise):
    """A sampler's step passes Python-float times, which skip 0-d tensors (memoised floats); the
    result must be the same bits as with a tensor time."""
    import torch

    data = dataset("digits8")
    spec = {"name": family, "network": {"name": "unet", "base": 8}}
    if family == "ni_ddpm":
        spec["noise"] = noise
    fam = build("family", spec, data)
    x, eps = torch.randn(5, *fam.shape), torch.randn(5, *fam.shape)
    for t in fam.process.sampling_times(7):
        tt = torch.tensor(t, dtype=torch.float64)
        assert torch.equal(fam.x0(x, t, eps), fam.x0(x, tt, eps))
        assert torch.equal(fam.time_input(t, 5), fam.time_input(tt, 5))
        with torch.no_grad():
            assert torch.equal(fam.eps(x, t), fam.eps(x, tt))
