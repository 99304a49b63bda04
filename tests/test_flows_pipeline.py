"""The flows plugin through bench's own runner: registration metadata, suite expansion, train -> sample
-> measure with ode_stats and video_recon, and the shipped suites/flows.yaml."""
from pathlib import Path

from bench.runner import CaseJob, RunSettings, run_case
from bench.suite import load_suite




ROOT = Path(__file__).resolve().parents[1]

SUITE = """\
name: flowsmini
seed: 0
defaults:
  train: {steps: 40, batch_size: 128, lr: 5.0e-3, ema: 0.9, grad_clip: 100.0}
  eval: {num_samples: 64, batch_size: 32, grid: 0}
matrix:
  dataset: [toy2d/moons, {name: moving_digits, n_train: 16, n_test: 4, id: md}]
  family:
    - {name: cnf, hidden: [16, 16], solver: rk4, step_size: 0.25, eval_solver: dopri5, eval_atol: 1.0e-5,
       eval_rtol: 1.0e-5, id: cnf2d}
    - {name: latent_ode, latent_dim: 4, channels: [4, 8], ode_hidden: [8], step_size: 0.1, id: lode,
       train: {steps: 2, batch_size: 4}}
  sampler: [null, {name: ode, temperature: 0.5, solver: rk4, step_size: 0.25, id: ode05}]
metrics: [ode_stats, video_recon]
exclude:
  - {dataset: toy2d/moons, sampler: null}
"""


def test_registration_meta(manager):
    regs = manager.registries
    assert set(regs.family.entry("cnf").meta["modalities"]) == {"points", "image"}
    assert regs.family.entry("mrcnf").meta["modalities"] == ["image"]
    assert "flow" in regs.family.entry("mrcnf").meta["provides"]
    assert regs.sampler.entry("ode").meta["requires"] == ["flow"]
    assert regs.metric.entry("video_recon").meta["modalities"] == ["video"]
    assert regs.dataset.entry("moving_digits").meta["modality"] == "video"


def test_cases_train_sample_and_measure(manager, tmp_path):
    (tmp_path / "s.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "s.yaml", manager.registries, manager.versions())
    assert sorted(c.family["id"] for c in suite.cases) == ["cnf2d", "lode"]  # incompatible pairs pruned
    settings = RunSettings(store=str(tmp_path / "store"), results_dir=str(tmp_path / "res"),
                           plugins=("bench_testplug",), quiet=True)
    records = {c.family["id"]: run_case(CaseJob(c.to_dict(), settings)) for c in suite.cases}
    cnf = records["cnf2d"]
    assert cnf["status"] == "ok", cnf.get("error")
    m = cnf["metrics"]
    assert m["nfe"] == 4 * 4  # rk4 with 4 steps, one solve per sample batch
    assert m["train_nfe_forward"] == 16 and m["train_nfe_backward"] == 16  # direct backprop
    assert m["num_params"] == (3 * 16 + 16) + (17 * 16 + 16) + (17 * 2 + 2)
    curve = cnf["series"]["train_loss"]
    assert curve[-1][1] < curve[0][1]  # the flow learns moons
    lode = records["lode"]
    assert lode["status"] == "ok", lode.get("error")
    assert {"recon_psnr", "pred_psnr", "pred_ssim", "pred_psnr_t11", "pred_psnr_t20"} <= set(lode["metrics"])
    assert lode["metrics"]["train_nfe_forward"] == 19 * 4  # rk4 over the 19 frame intervals of 0.1 (train_frames: all)


def test_shipped_flows_suite_expands(manager):
    regs = manager.registries
    suite = load_suite(ROOT / "suites" / "flows.yaml", regs, manager.versions(), overrides=["train.steps=5"])
    families = {c.family["id"] for c in suite.cases}
    assert {"cnf", "mrcnf1", "mrcnf2_haar", "mrcnf2_unimodular", "mrcnf3_haar", "mrcnf3_unimodular",
            "latent_ode_det", "latent_ode_vae", "cnf_adjoint", "mrcnf2_unimodular_mrnoise",
            "mrcnf3_unimodular_mrnoise"} == families
    temps = {c.sampler["temperature"] for c in suite.cases if c.sampler}
    assert temps == {1.0, 0.9, 0.8, 0.7}
    assert all(c.train["steps"] == 5 for c in suite.cases)
