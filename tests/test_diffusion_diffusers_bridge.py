"""The ``diffusers`` sampler: diffusers' schedulers driving bench VP families. Checked against the
exact-score oracle's ground truth (mean and covariance within Monte Carlo error), against bench's own
DDIM, against diffusers' own loop on a pretrained family, and for NFE and per-sample noise."""
import numpy as np
import pydantic
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from bench.rng import PerSampleRNG  # noqa: E402
from bench.timing import NFECounter  # noqa: E402
from bench_diffusion.samplers.diffusers_bridge import SCHEDULERS, DiffusersScheduler  # noqa: E402
from bench_diffusion.testing import build, dataset, registries  # noqa: E402

GAUSS = dataset("gaussian", dim=3)
IMAGE = dataset("gaussian_image", size=4)


def oracle(data=GAUSS, **kw):
    return build("family", {"name": "oracle_vp", "T": 1000, **kw}, data)


def bridge(scheduler, steps, **options):
    return build("sampler", {"name": "diffusers", "scheduler": scheduler, "steps": steps, "options": options}, GAUSS)


def draw(sampler, family, n, seed=0, start=0):
    with torch.no_grad():
        return sampler.sample(family, PerSampleRNG.for_indices(seed, range(start, start + n)))


# scheduler, steps, options, samples: high-order solvers at 20-25 steps, Euler at 200, and the
# ancestral (first-order stochastic) ones at 1000 (slow: they draw through one torch.Generator per
# sample, a Python call per sample and step; at 100 steps they are ~9% low in variance, like bench's own
# ancestral sampler at 100 steps)
MOMENT_CASES = [
    ("DPMSolverMultistepScheduler", 20, {}, 6000),
    ("DPMSolverMultistepScheduler", 40, {"algorithm_type": "sde-dpmsolver++"}, 6000),
    ("UniPCMultistepScheduler", 20, {}, 6000), ("DEISMultistepScheduler", 20, {}, 6000),
    ("HeunDiscreteScheduler", 25, {}, 6000), ("EulerDiscreteScheduler", 200, {}, 6000),
    ("DDIMScheduler", 50, {}, 6000), ("DDIMScheduler", 200, {"eta": 1.0}, 6000),
    pytest.param("EulerAncestralDiscreteScheduler", 1000, {}, 4000, marks=pytest.mark.slow),
    pytest.param("DDPMScheduler", 1000, {}, 4000, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,steps,options,n", MOMENT_CASES)
def test_oracle_samples_have_the_data_mean_and_covariance(name, steps, options, n):
    fam = oracle()
    x = draw(bridge(name, steps, **options), fam, n).double().numpy()
    mean, cov = np.array(GAUSS.info.params["mean"]), np.array(GAUSS.info.params["cov"])
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4.5 * se_mean), (x.mean(0), mean)
    d = np.diag(cov)
    se_cov = np.sqrt((np.outer(d, d) + cov ** 2) / n)  # sd of a Gaussian sample covariance entry
    assert np.all(np.abs(np.cov(x.T) - cov) < 4.5 * se_cov + 0.01 * np.abs(cov).max()), (np.cov(x.T), cov)


@pytest.mark.parametrize("data,noise,eta", [(GAUSS, "isotropic", 0.0), (GAUSS, "isotropic", 0.6),
                                            (IMAGE, {"name": "gff", "gamma": 1.0}, 0.0),
                                            (IMAGE, {"name": "gff", "gamma": 1.0}, 1.0)])
def test_ddim_scheduler_equals_bench_ddim(data, noise, eta):
    fam = oracle(data, noise=noise)
    ours = build("sampler", {"name": "ddim", "steps": 20, "eta": eta, "clip_x0": False}, data)
    theirs = build("sampler", {"name": "diffusers", "scheduler": "DDIMScheduler", "steps": 20,
                               "options": {"eta": eta}}, data)
    a, b = draw(ours, fam, 64, seed=3), draw(theirs, fam, 64, seed=3)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())


@pytest.mark.parametrize("name,per_step", [("DPMSolverMultistepScheduler", 1), ("UniPCMultistepScheduler", 1),
                                           ("EulerDiscreteScheduler", 1), ("HeunDiscreteScheduler", 2),
                                           ("KDPM2DiscreteScheduler", 2), ("DEISMultistepScheduler", 1)])
def test_nfe_is_the_schedulers_network_calls(name, per_step):
    fam = oracle()
    sampler = bridge(name, 10)
    counter = NFECounter()
    with counter.attached(fam.nfe_modules()):
        draw(sampler, fam, 5)
    ref = getattr(diffusers, name)(num_train_timesteps=1000)
    ref.set_timesteps(10)
    assert counter.calls == len(ref.timesteps)
    assert counter.calls in (10 * per_step, 10 * per_step - 1)  # Heun / KDPM2: 2 calls a step, 1 on the last
    assert len(sampler.realised["t"]) == counter.calls


@pytest.mark.parametrize("name,options", [("EulerAncestralDiscreteScheduler", {}), ("DDPMScheduler", {}),
                                          ("DDIMScheduler", {"eta": 1.0}),
                                          ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"})])
def test_noise_is_per_sample(name, options):
    fam, sampler = oracle(), bridge(name, 8, **options)
    whole = draw(sampler, fam, 6, seed=7)
    parts = torch.cat([draw(sampler, fam, 2, seed=7, start=0), draw(sampler, fam, 4, seed=7, start=2)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)
    assert not torch.equal(whole, draw(sampler, fam, 6, seed=8))


def test_continuous_family_gets_a_1000_level_table():
    fam = build("family", {"name": "oracle_vp", "T": None}, GAUSS)
    x = draw(bridge("UniPCMultistepScheduler", 20), fam, 4000).double().numpy()
    cov = np.array(GAUSS.info.params["cov"])
    assert np.abs(np.cov(x.T) - cov).max() < 0.15 * np.abs(cov).max()


def test_pretrained_family_equals_diffusers_own_loop(tmp_path):
    from test_diffusion_pretrained import SHAPE, save_pipeline

    from bench.protocols import DataInfo
    from bench_diffusion.testing import context

    unet, _ = save_pipeline(tmp_path, "v_prediction", beta_schedule="squaredcos_cap_v2")
    info = DataInfo(name="img", modality="image", shape=SHAPE)
    fam = context(info).build("family", {"name": "diffusers", "path": str(tmp_path)})
    sampler = context(info).build("sampler", {"name": "diffusers", "scheduler": "DPMSolverMultistepScheduler",
                                              "steps": 8})
    ours = draw(sampler, fam, 3, seed=1)
    # the scheduler the checkpoint would get in diffusers (its own defaults, the checkpoint's schedule)
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                                prediction_type="v_prediction")
    ref.set_timesteps(8)
    x = PerSampleRNG.for_indices(1, range(3)).randn(*SHAPE)
    with torch.no_grad():
        for k in ref.timesteps:
            x = ref.step(unet(x, k).sample, k, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_bad_names_and_options_are_clear():
    regs = registries()
    with pytest.raises(pydantic.ValidationError, match="did you mean 'HeunDiscreteScheduler'"):
        regs.sampler.validate("diffusers", {"scheduler": "HeunDiscrete"})
    with pytest.raises(pydantic.ValidationError, match="unknown diffusers scheduler 'os.system'"):
        regs.sampler.validate("diffusers", {"scheduler": "os.system"})
    with pytest.raises(ValueError, match="come from the family"):
        DiffusersScheduler("DDIMScheduler", 10, {"prediction_type": "sample"})
    with pytest.raises(ValueError, match="did you mean 'solver_order'"):
        draw(DiffusersScheduler("DPMSolverMultistepScheduler", 10, {"solver_ordr": 2}), oracle(), 2)
    assert len(SCHEDULERS) == len(set(SCHEDULERS)) and all(hasattr(diffusers, n) for n in SCHEDULERS)


def test_bad_scheduler_name_and_missing_model_fail_validation_with_file_and_line(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    path = tmp_path / "suite.yaml"
    path.write_text("name: x\ndefaults:\n  train: {steps: 0}\nmatrix:\n  dataset: [{name: gaussian_image, size: 8}]\n"
                    "  family: [{name: diffusers, path: %s}]\n"
                    "  sampler: [{name: diffusers, scheduler: UniPCMultistep}]\nmetrics: [swd]\n" % (tmp_path / "none"))
    out = CliRunner().invoke(app, ["validate", str(path)])
    lines = out.output.strip().splitlines()  # both problems in one run, one line each
    assert out.exit_code == 2 and len(lines) == 2, out.output
    assert f"{path}:6:" in lines[0] and "not point to a directory" in lines[0]
    assert f"{path}:7:" in lines[1] and "did you mean 'UniPCMultistepScheduler'" in lines[1]
    path.write_text(path.read_text().replace(str(tmp_path / "none"), str(tmp_path)))
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 2 and f"{path}:7:" in out.output and "did you mean 'UniPCMultistepScheduler'" in out.output


def test_missing_diffusers_is_one_clear_line(monkeypatch):
    import sys

    from bench.errors import UserError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(UserError, match=r"needs the optional dependency diffusers \(pip install 'bench\[diffusers\]'\)"):
        DiffusersScheduler("DDIMScheduler", 10)


@pytest.mark.slow
def test_pretrained_family_and_bridge_run_end_to_end(workdir):
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from bench.cli import app
    from test_diffusion_pretrained import save_pipeline

    save_pipeline(workdir / "model", "v_prediction")
    (workdir / "suite.yaml").write_text(
        "name: pretrained\ndefaults:\n  train: {steps: 0}\n  eval: {num_samples: 16, batch_size: 8, grid: 0}\n"
        "matrix:\n  dataset: [{name: gaussian_image, size: 8, channels: 2}]\n"
        f"  family: [{{name: diffusers, path: {workdir / 'model'}}}]\n"
        "  sampler: [{name: ddim, steps: 5}, {name: diffusers, scheduler: HeunDiscreteScheduler, steps: 4}]\n"
        "metrics: [swd]\n")
    out = CliRunner().invoke(app, ["run", "suite.yaml", "-q", "--threads", "1"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    assert out.exit_code == 0 and len(records) == 2 and all(r["status"] == "ok" for r in records), out.output[-2000:]
    nfe = sorted(r["metrics"]["nfe"] for r in records)
    assert nfe == [5.0, 7.0]  # ddim: steps; Heun: 2 steps - 1
    assert all("num_params" not in r["metrics"] for r in records)  # not trained


@pytest.mark.acceptance
def test_shipped_suite_end_to_end(workdir):
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from bench.cli import app

    suite = Path(__file__).resolve().parents[1] / "suites" / "samplers-oracle-diffusers.yaml"
    out = CliRunner().invoke(app, ["run", str(suite), "-q", "--threads", "1", "--set", "eval.num_samples=64",
                                   "--set", "eval.batch_size=64"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    failed = {r["case_id"]: r.get("error") for r in records if r["status"] != "ok"}
    assert out.exit_code == 0 and len(records) == 105 and not failed, (out.output[-2000:], failed)
