"""Devices and precision (issue 14): ``--device``/``--precision``, suite ``device:``/``precision:``/``tf32:``,
the device as provenance (not hashed), autocast and loss scaling, device clocks, and the device path of
PerSampleRNG. CUDA-only checks are skipped on machines without a GPU."""
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import trainer
from bench.cli import app
from bench.device import autocast, resolve_device
from bench.errors import SuiteError, UserError
from bench.rng import PerSampleRNG
from bench.runner import CaseJob, CaseRunner, RunSettings
from bench.suite import load_suite
from bench.timing import DeviceClock, peak_gpu_mem_mb
from bench.tracking import search_runs_frame

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")

SUITE = """\
name: dev
seed: 0
defaults:
  train: {steps: 20, batch_size: 32, lr: 0.05}
  eval: {num_samples: 40, batch_size: 16, grid: 0}
{defaults_extra}
matrix:
  dataset: [toy2d/moons]
  family:
    - fitgauss
{family_extra}
  sampler: [gauss]
metrics: [mean_err]
"""


def suite_text(defaults_extra: str = "", family_extra: str = "") -> str:
    return SUITE.replace("{defaults_extra}", defaults_extra).replace("{family_extra}", family_extra)


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def load(workdir, manager, text, overrides=()):
    (workdir / "suite.yaml").write_text(text)
    return load_suite(workdir / "suite.yaml", manager.registries, manager.versions(), list(overrides))


# ----------------------------------------------------------------------------- selection


def test_auto_is_cuda_when_available_else_cpu(monkeypatch, no_cuda):
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr("bench.device.may_have_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match=r"device 'cuda:2' is not available.*cuda:0 \(Fake GPU\), cuda:1"):
        resolve_device("cuda:2")


def test_auto_asks_torch_only_where_gpu_device_files_exist(monkeypatch, tmp_path):
    import bench.device as device

    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device, "_GPU_DEVICE_FILES", (str(tmp_path / "nvidiactl"),))
    assert device.may_have_cuda() is False
    (tmp_path / "nvidiactl").write_text("")
    assert device.may_have_cuda() is True
    monkeypatch.setattr(device.sys, "platform", "darwin")
    assert device.may_have_cuda() is False


def test_a_missing_device_names_it_and_what_torch_sees(no_cuda):
    with pytest.raises(UserError) as info:
        resolve_device("cuda")
    assert str(info.value) == "error: device 'cuda' is not available on this machine; torch sees: cpu"
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_suite_device_the_machine_lacks_fails_at_load_with_its_line(workdir, manager, no_cuda):
    text = suite_text("  device: cuda")
    with pytest.raises(SuiteError) as info:
        load(workdir, manager, text)
    loc = info.value.location
    assert loc is not None and loc.line == text.splitlines().index("  device: cuda") + 1
    assert "torch sees: cpu" in str(info.value)
    # a bad spelling is a schema error at its line too
    with pytest.raises(SuiteError, match=r"defaults\.device"):
        load(workdir, manager, suite_text("  device: gpu0"))


def test_cli_missing_device_is_one_line_and_exit_2(workdir, no_cuda):
    (workdir / "suite.yaml").write_text(suite_text())
    result = CliRunner().invoke(app, ["run", "suite.yaml", "--device", "cuda:0", "--plugins", "bench_testplug"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "device 'cuda:0' is not available" in lines[0] and "torch sees: cpu" in lines[0]
    assert lines[0].startswith("--device: error:")
    assert "Traceback" not in result.output and not Path("results").exists()
    result = CliRunner().invoke(app, ["run", "suite.yaml", "--precision", "fp8", "--plugins", "bench_testplug"])
    assert result.exit_code == 2 and result.output.strip() == \
        "--precision: error: unknown precision 'fp8': use fp32, bf16, fp16"


def test_device_is_not_hashed_precision_is(workdir, manager, no_cuda):
    base = load(workdir, manager, suite_text()).cases[0]
    on_cpu = load(workdir, manager, suite_text("  device: cpu")).cases[0]
    assert base.device == on_cpu.device == "cpu"
    assert (base.hash, base.train_key, base.id) == (on_cpu.hash, on_cpu.train_key, on_cpu.id)
    assert "precision" not in base.config() and "device" not in base.config()
    bf16 = load(workdir, manager, suite_text("  precision: bf16")).cases[0]
    assert bf16.config()["precision"] == "bf16"
    assert bf16.hash != base.hash and bf16.train_key != base.train_key and bf16.id == base.id


def test_entries_override_defaults_and_the_flag_overrides_all(workdir, manager, no_cuda):
    text = suite_text("  precision: bf16", "    - {name: fitgauss, id: half, precision: fp16, device: cpu}")
    cases = {c.labels()["family"]: c for c in load(workdir, manager, text).cases}
    assert cases["fitgauss"].precision == "bf16" and cases["half"].precision == "fp16"
    assert "precision" not in cases["half"].family  # a run key, not a component parameter
    flagged = {c.labels()["family"]: c for c in load(workdir, manager, text, ["precision=fp32"]).cases}
    assert {c.precision for c in flagged.values()} == {"fp32"}
    with pytest.raises(SuiteError, match="not available"):  # --device cuda reaches the entry that says cpu
        load(workdir, manager, text, ["device=cuda"])
    with pytest.raises(SuiteError, match=r"precision"):
        load(workdir, manager, text, ["precision=fp8"])


# ----------------------------------------------------------------------------- precision


class Recorder(torch.nn.Module):
    """A linear model that records the autocast state its loss was computed under."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.seen: list = []

    def loss(self, x, rng):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        out = self.lin(x)
        return (out - x).pow(2).mean()


class Data:
    def __init__(self):
        self.x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def split(self, name):
        return self.x


CFG = {"steps": 30, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "ema": 0.0, "grad_clip": 1.0,
       "warmup": 0, "log_every": 10}


@pytest.mark.parametrize("precision,dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_training_runs_under_the_precision_it_is_given(precision, dtype):
    torch.manual_seed(0)
    family = Recorder()
    state = trainer.train(family, Data(), CFG, 0, lambda it, **_: it, lambda where: None,
                          device="cpu", precision=precision)
    enabled = {e for e, _ in family.seen}
    assert enabled == {dtype is not None}
    if dtype is not None:
        assert {d for _, d in family.seen} == {dtype}
    curve = [v for _, v in state["loss_curve"]]
    assert curve[-1] < curve[0]  # it learns in every precision (fp16 through the loss scaler)


def test_fp32_uses_no_autocast_at_all():
    """fp32 must give the numbers bench gave before precision existed: no autocast context at all."""
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.Linear(3, 3)(torch.ones(2, 3)).dtype == torch.bfloat16


def test_sampling_runs_under_autocast_and_returns_float32_cpu_samples(workdir, manager, no_cuda):
    case = load(workdir, manager, suite_text("  precision: bf16")).cases[0]
    job = CaseJob(case.to_dict(), RunSettings(store=str(workdir / "store"), results_dir=str(workdir / "res"),
                                              plugins=("bench_testplug",), quiet=True))
    runner = CaseRunner(case, job)
    dataset = runner.load_dataset()
    from bench.context import BuildContext

    ctx = BuildContext.from_registries(runner.regs, seed=0, store=runner.store, dataset=dataset)
    family = runner.regs.family.create(case.family, context=ctx)
    seen = []

    class Sampler:
        def sample(self, family, rng):
            seen.append(torch.is_autocast_enabled("cpu"))
            x = rng.randn(*family.mu.shape)
            family.head(x)
            return torch.nn.functional.linear(x, torch.eye(x.shape[1])) * family.s.exp() + family.mu  # bf16 matmul

    out = runner.sample(family, Sampler(), 40)
    assert seen == [True] * 3 and out.nfe == 1
    assert out.samples.dtype == torch.float32 and out.samples.device.type == "cpu" and out.samples.shape == (40, 2)


@pytest.mark.slow  # about 20 s: a CLI run with MLflow
def test_bf16_run_end_to_end_logs_device_and_precision(workdir):
    (workdir / "suite.yaml").write_text(suite_text())
    result = CliRunner().invoke(app, ["run", "suite.yaml", "-q", "--device", "cpu", "--precision", "bf16",
                                      "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(Path("results").glob("dev/*/cases/*/record.json")).read_text())
    assert record["device"] == "cpu" and record["precision"] == "bf16" and record["status"] == "ok"
    assert "peak_gpu_mem_mb" not in record["metrics"]  # absent on the CPU
    runs = search_runs_frame("sqlite:///" + str(Path("mlflow.db").resolve()), ["dev"], max_results=10)
    case = runs[runs["tags.bench.kind"] == "case"].iloc[0]
    assert case["tags.bench.device"] == "cpu" and case["params.precision"] == "bf16"


@pytest.mark.slow
def test_quickstart_bf16_on_cpu_end_to_end(workdir):
    """The shipped quickstart, tiny, in bf16 on the CPU: every case finishes."""
    root = Path(__file__).resolve().parents[1]
    result = CliRunner().invoke(app, ["run", str(root / "suites" / "quickstart.yaml"), "-q", "--device", "cpu",
                                      "--precision", "bf16", "--set", "train.steps=20", "--set", "eval.num_samples=64",
                                      "--set", "eval.batch_size=64", "--set", "eval.grid=0",
                                      "--results", str(workdir / "results"), "--store", str(workdir / "store"),
                                      "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (workdir / "results").glob("quickstart/*/cases/*/record.json")]
    assert records and {r["status"] for r in records} == {"ok"}
    assert {r["precision"] for r in records} == {"bf16"}


# ----------------------------------------------------------------------------- timing


def test_device_clock_on_cpu_measures_wall_time():
    clock = DeviceClock("cpu")
    clock.start()
    time.sleep(0.05)
    assert 0.04 < clock.stop() < 1.0
    assert peak_gpu_mem_mb("cpu") is None


@CUDA
def test_cuda_clock_covers_the_kernels_and_peak_memory_is_reported():
    x = torch.randn(4096, 4096, device="cuda")
    clock = DeviceClock("cuda")
    clock.start()
    for _ in range(10):
        x = x @ x / 4096
    seconds = clock.stop()
    assert seconds > 0 and peak_gpu_mem_mb("cuda") >= 64


# ----------------------------------------------------------------------------- same samples everywhere


def test_off_the_cpu_draws_take_the_torch_integer_path_on_that_device():
    """What a GPU runs: off the CPU, PerSampleRNG uses the torch int64 path with every tensor on the device
    (here the meta device, which runs the same code without data); tests/test_core_rng.py checks that this
    path gives the numpy path's words bit for bit, by forcing it on the CPU."""
    rng = PerSampleRNG.for_indices(0, range(3), device="meta")
    assert not rng._numpy and PerSampleRNG.for_indices(0, range(3))._numpy
    z, k = rng.randn(2, 5), rng.randint(7, 4)
    assert z.device.type == k.device.type == "meta" and z.shape == (3, 2, 5) and k.shape == (3, 4)


@CUDA
def test_cuda_words_are_bit_identical_and_normals_agree_to_a_float32_ulp():
    cpu = PerSampleRNG.for_indices(7, range(33))
    gpu = PerSampleRNG.for_indices(7, range(33), device="cuda")
    assert not gpu._numpy
    assert torch.equal(cpu.randint(1 << 20, 100), gpu.randint(1 << 20, 100).cpu())
    a, b = cpu.randn(3, 32, 32), gpu.randn(3, 32, 32).cpu()
    assert torch.allclose(a, b, rtol=2 ** -23, atol=2 ** -23)


# ----------------------------------------------------------------------------- benchmarks/gpu_check.py


def _gpu_check():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_frechet_distance_matches_scipy():
    import numpy as np
    from scipy import linalg

    gen = np.random.default_rng(0)
    a = gen.normal(size=(400, 6)) @ gen.normal(size=(6, 6))
    b = gen.normal(size=(300, 6)) * 1.5 + 0.3
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = mu @ mu + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert _gpu_check().frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert abs(_gpu_check().frechet_distance(a, a)) < 1e-9


@pytest.mark.slow  # about a minute on a 2-core CPU
def test_gpu_check_quick_on_the_cpu(tmp_path):
    out = tmp_path / "table.md"
    assert _gpu_check().main(["--device", "cpu", "--quick", "--output", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| fp32") or r.startswith("| bf16")]
    assert len(rows) == 2
    header = next(r for r in out.read_text().splitlines() if r.startswith("| precision"))
    for col in ("train_steps_per_s", "samples_per_s", "ms_per_nfe", "peak_gpu_mem_mb", "bench_over_hand",
                "fid_random_proj", "max_diff_vs_cpu"):
        assert col in header
    fp32 = dict(zip(header.strip("| ").split(" | "), rows[0].strip("| ").split(" | ")))
    assert float(fp32["max_diff_vs_cpu"]) < 1e-3 and fp32["peak_gpu_mem_mb"] == "n/a"


def test_gpu_check_refuses_a_missing_device(capsys, no_cuda):
    assert _gpu_check().main(["--device", "cuda"]) == 2
    assert "torch sees: cpu" in capsys.readouterr().err


# ----------------------------------------------------------------------------- several GPUs


def _environ(pid: int) -> dict:
    """The environment a spawned child was exec'd with (waiting for the exec: before it, /proc shows
    the parent's initial environment)."""
    deadline = time.monotonic() + 30
    while b"spawn_main" not in Path(f"/proc/{pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads a child's environment from /proc (Linux)")
@pytest.mark.parametrize("preset,want", [(None, ["0", "1", "0"]), ("5,7", ["5", "7", "5"])])
def test_process_workers_are_pinned_one_gpu_each(monkeypatch, preset, want):
    import os

    from bench.executors.process import ProcessExecutor

    if preset is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", preset)
    executor = ProcessExecutor(workers=3, gpus=2)
    try:
        assert [_environ(w.proc.pid).get("CUDA_VISIBLE_DEVICES") for w in executor.pool] == want
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == preset  # the driver's own is restored
    finally:
        for w in executor.pool:
            w.kill()
    default = ProcessExecutor(gpus=2)  # --workers defaults to one per GPU
    for w in default.pool:
        w.kill()
    assert len(default.pool) == 2


def test_gpus_are_pinned_only_when_every_case_runs_on_plain_cuda(monkeypatch):
    from bench.device import pinnable_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pinnable_gpus(["cuda", "cuda"]) == 4
    assert pinnable_gpus(["cuda", "cuda:1"]) == 0 and pinnable_gpus(["cpu"]) == 0


def test_ray_asks_one_gpu_for_a_cuda_case_and_none_otherwise():
    from bench.executors.ray import task_options

    settings = RunSettings(store="s", results_dir="r")
    assert task_options(CaseJob({"device": "cuda"}, settings)) == {"num_cpus": 1, "num_gpus": 1}
    assert task_options(CaseJob({"device": "cpu"}, settings)) == {"num_cpus": 1, "num_gpus": 0}


def test_tf32_is_set_for_cuda_cases_only_and_restored(workdir, manager, no_cuda):
    from bench.device import tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32("cuda", not before[0]):  # the flags are plain settings: no GPU needed to set them
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32("cpu", not before[0]):
        assert torch.backends.cuda.matmul.allow_tf32 is before[0]
    base = load(workdir, manager, suite_text()).cases[0]
    on = load(workdir, manager, suite_text("  tf32: true")).cases[0]
    assert on.tf32 is True and on.config()["tf32"] is True and on.hash != base.hash
