"""Threads, resources and compilation (issue 14, items 6-8, docs/scaling.md): the torch thread count is
part of a case's config and hash, the same whatever the executor; executors fit workers x threads
into the machine's cores; suite ``resources:`` reach Ray and the process executor; ``compile: true``
on a network spec; the loss is read once per loss-curve point; torch-fidelity runs on the case's device."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from bench import trainer
from bench.cli import app
from bench.errors import SuiteError
from bench.executors import plan
from bench.runner import CaseJob, RunSettings, run_case
from bench.suite import load_suite

SUITE = """\
name: thr
seed: 0
defaults:
  train: {steps: 20, batch_size: 32, lr: 0.05}
  eval: {num_samples: 40, batch_size: 16, grid: 0}
DEFAULTS
matrix:
  dataset: [toy2d/moons]
  family:
FAMILIES
  sampler: [gauss]
metrics: [mean_err]
"""


def load(workdir, manager, defaults="", families=("fitgauss",), overrides=()):
    text = SUITE.replace("DEFAULTS", defaults).replace("FAMILIES", "\n".join(f"    - {f}" for f in families))
    (workdir / "s.yaml").write_text(text)
    return load_suite(workdir / "s.yaml", manager.registries, manager.versions(), list(overrides))


# ----------------------------------------------------------------------------- the resolved config


def test_threads_default_to_one_whatever_the_machine_and_are_hashed(workdir, manager):
    torch.set_num_threads(2)  # the driver's own count no longer leaks into a case
    try:
        (case,) = load(workdir, manager).cases
    finally:
        torch.set_num_threads(1)
    assert case.threads == 1 and case.config()["threads"] == 1
    (two,) = load(workdir, manager, "  threads: 2").cases
    assert two.config()["threads"] == 2
    assert two.hash != case.hash and two.train_key != case.train_key  # they change float reductions
    assert two.id == case.id  # the same case, computed differently: its id does not change


def test_threads_per_entry_by_set_and_by_flag(workdir, manager):
    cases = load(workdir, manager, "  threads: 2", families=["fitgauss", "{name: fitgauss, init_scale: 2, threads: 3}"]).cases
    assert sorted(c.threads for c in cases) == [2, 3]
    cases = load(workdir, manager, "  threads: 2", families=["fitgauss", "{name: fitgauss, init_scale: 2, threads: 3}"],
                 overrides=["threads=4"]).cases
    assert [c.threads for c in cases] == [4, 4]  # --set threads= (and --threads) set it everywhere


def test_resources_cpus_is_the_default_thread_count_and_threads_win(workdir, manager):
    (case,) = load(workdir, manager, "  resources: {cpus: 4, gpus: 0.5}").cases
    assert case.threads == 4 and case.resources == {"cpus": 4, "gpus": 0.5}
    assert "resources" not in case.config()  # scheduling only: not hashed
    (case,) = load(workdir, manager, "  resources: {cpus: 4}\n  threads: 1").cases
    assert case.threads == 1 and plan.case_cpus(case.to_dict()) == 4
    cases = load(workdir, manager, "", families=["fitgauss", "{name: fitgauss, init_scale: 2, resources: {gpus: 1}}"]).cases
    assert [c.resources for c in cases] == [{}, {"gpus": 1.0}]


@pytest.mark.parametrize("defaults,where,message", [
    ("  threads: 0", "s.yaml:6:", "defaults.threads"),
    ("  threads: many", "s.yaml:6:", "defaults.threads"),
    ("  resources: {cpu: 2}", "s.yaml:6:", "unknown key 'cpu' in defaults.resources"),
    ("  resources: {gpus: -1}", "s.yaml:6:", "defaults.resources.gpus"),
])
def test_bad_threads_and_resources_are_located_errors(workdir, manager, defaults, where, message):
    with pytest.raises(SuiteError) as info:
        load(workdir, manager, defaults)
    assert message in str(info.value) and where in str(info.value), str(info.value)


def test_run_case_runs_on_the_case_threads_and_restores_the_caller_s(workdir, manager):
    (case,) = load(workdir, manager, "  threads: 2").cases
    settings = RunSettings(store=str(workdir / "store"), results_dir=str(workdir / "res"), plugins=("bench_testplug",),
                           quiet=True)
    record = run_case(CaseJob(case.to_dict(), settings))
    assert record["status"] == "ok", record.get("error")
    assert record["threads"] == 2 and record["config"]["threads"] == 2
    assert torch.get_num_threads() == 1


def test_bad_threads_flag_is_exit_2(workdir):
    result = CliRunner().invoke(app, ["run", "nowhere.yaml", "--threads", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output


# ----------------------------------------------------------------------------- executors


def test_workers_times_cpus_fit_the_cores():
    assert plan.fitting_workers(1, cores=2) == 2
    assert plan.fitting_workers(2, cores=8) == 4
    assert plan.fitting_workers(3, cores=8) == 2
    assert plan.fitting_workers(4, cores=2) == 1  # a case bigger than the machine still runs, alone
    assert plan.case_cpus({"threads": 3}) == 3 and plan.case_cpus({"threads": 1, "resources": {"cpus": 2}}) == 2


def test_the_default_executor_is_a_pool_when_several_trainings_fit_side_by_side():
    assert plan.default_executor(trainings=5, cpus=1, cores=2) == "process"
    assert plan.default_executor(trainings=1, cpus=1, cores=16) == "local"  # one model: nothing to spread
    assert plan.default_executor(trainings=5, cpus=2, cores=2) == "local"  # one worker fits
    assert plan.default_executor(trainings=5, cpus=1, cores=1) == "local"
    assert plan.default_executor(trainings=3, cpus=8, gpus=2, cores=4) == "process"  # one worker per GPU


def test_process_executor_fits_its_pool_to_the_cases_cpus(monkeypatch):
    from bench.executors import process

    started = []

    class FakeWorker:
        def __init__(self, threads, gpu=None):
            started.append((threads, gpu))

    monkeypatch.setattr(process, "CaseWorker", FakeWorker)
    monkeypatch.setattr(plan, "machine_cores", lambda: 8)
    assert process.ProcessExecutor(cpus=3).workers == 2
    assert process.ProcessExecutor().workers == 8
    assert process.ProcessExecutor(workers=5, cpus=3).workers == 5  # --workers is the user's choice
    assert process.ProcessExecutor(gpus=2, cpus=4).workers == 2
    assert started[:2] == [(3, None), (3, None)]


def test_ray_asks_for_the_case_resources():
    from bench.executors.ray import task_options

    settings = RunSettings(store="s", results_dir="r")

    def options(**case):
        return task_options(CaseJob(case, settings))

    assert options(device="cpu", threads=1) == {"num_cpus": 1, "num_gpus": 0}
    assert options(device="cpu", threads=2) == {"num_cpus": 2, "num_gpus": 0}
    assert options(device="cuda", threads=1, resources={"cpus": 4, "gpus": 1}) == {"num_cpus": 4, "num_gpus": 1}
    assert options(device="cuda", threads=1, resources={"gpus": 0.5}) == {"num_cpus": 1, "num_gpus": 0.5}


def test_ray_refuses_cases_larger_than_the_cluster():
    from bench.errors import UserError
    from bench.executors.ray import _check_feasible

    class FakeRay:
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    settings = RunSettings(store="s", results_dir="r")
    _check_feasible(FakeRay, [CaseJob({"threads": 2}, settings)])
    with pytest.raises(UserError, match="num_cpus=4"):
        _check_feasible(FakeRay, [CaseJob({"threads": 1, "resources": {"cpus": 4}}, settings)])
    with pytest.raises(UserError, match="num_gpus=1"):
        _check_feasible(FakeRay, [CaseJob({"threads": 1, "device": "cuda"}, settings)])


DIFF_SUITE = """\
name: same
seed: 0
defaults:
  train: {steps: 60, batch_size: 128, lr: 2.0e-3, ema: 0.99}
  eval: {num_samples: 256, batch_size: 256, grid: 0}
matrix:
  dataset: [toy2d/8gaussians]
  family:
    - {name: ddpm, network: {name: mlp, hidden: 64}}
    - {name: smld, L: 100, network: {name: mlp, hidden: 64}}
  sampler: [{name: ddim, steps: 5}, {name: cas, steps: 5}]
metrics: [swd, timing]
"""


@pytest.mark.slow  # two bench runs of four small diffusion cases in fresh interpreters
def test_default_executor_gives_the_local_executor_s_numbers(tmp_path):
    """Before: local ran cases on the driver's thread count (2 here, as torch's default on 2 cores) and
    process on cores/workers (1), so the same suite gave different numbers. Now both run each case on
    its ``threads`` (1), and the default (a process pool: two trainings fit side by side on 2 cores)
    gives exactly the local executor's numbers."""
    (tmp_path / "s.yaml").write_text(DIFF_SUITE)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # a driver with torch's default count on 2 cores

    def run(tag, *args):
        out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "s.yaml", "-q", "--store", f"store-{tag}",
                              "--results", f"res-{tag}", "--tracking-uri", f"sqlite:///{tmp_path}/{tag}.db", *args],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        recs = [json.loads(p.read_text()) for p in (tmp_path / f"res-{tag}").glob("same/*/cases/*/record.json")]
        return out.stdout, {r["case_id"]: r for r in recs}

    _, local = run("local", "--executor", "local")
    _, default = run("default")
    assert set(local) == set(default) and len(local) == 2  # ddpm/ddim and smld/cas (the other pairs are pruned)

    def numbers(rec):  # every metric but clocks and memory
        return {k: v for k, v in rec["metrics"].items()
                if not any(w in k for w in ("time", "per_s", "per_nfe", "peak_", "iqr"))}

    for case_id, rec in local.items():
        other = default[case_id]
        assert rec["threads"] == other["threads"] == 1
        assert rec["config"] == other["config"]
        assert {"swd", "nfe", "final_loss"} <= set(numbers(rec))
        assert numbers(rec) == numbers(other), case_id  # exactly
        assert rec["series"]["train_loss"] == other["series"]["train_loss"]
    if plan.machine_cores() >= 2:  # the default used the machine's cores
        assert len({r["pid"] for r in default.values()}) == 2


# ----------------------------------------------------------------------------- the loss without a sync per step


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.losses: list[torch.Tensor] = []

    def loss(self, x, rng):
        out = (self.lin(x) - x).pow(2).mean()
        self.losses.append(out.detach().clone())
        return out


class Data:
    def split(self, name):
        return torch.randn(64, 4, generator=torch.Generator().manual_seed(0))


CFG = {"steps": 25, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0, "ema": 0.0, "grad_clip": 1.0,
       "warmup": 0, "log_every": 10}


def test_loss_curve_is_the_python_float_mean_bit_for_bit_with_one_read_per_point(monkeypatch):
    """The curve equals what the per-step ``float(loss)`` loop gave (a Python float sum divided by the
    count), and the loop reads a tensor on the host only once per curve point (3 points for 25 steps
    at log_every=10), not once per step."""
    reads = []
    real = torch.Tensor.__float__

    def counting(self):
        reads.append(self.shape)
        return real(self)

    torch.manual_seed(0)
    family = Lin()
    monkeypatch.setattr(torch.Tensor, "__float__", counting)
    state = trainer.train(family, Data(), CFG, 0, lambda it, **_: it, lambda where: None)
    monkeypatch.undo()
    assert len(reads) == 3
    want, running, count = [], 0.0, 0
    for step, loss in enumerate(family.losses):
        running += float(loss)
        count += 1
        if (step + 1) % 10 == 0 or step + 1 == 25:
            want.append([step + 1, running / count])
            running, count = 0.0, 0
    assert state["loss_curve"] == want  # exact


def test_a_non_finite_loss_fails_at_its_curve_point():
    class Blows(Lin):
        def loss(self, x, rng):
            out = super().loss(x, rng)
            return out * math.inf if len(self.losses) == 13 else out

    with pytest.raises(Exception, match=r"training loss became (inf|nan) at steps 10-19"):
        trainer.train(Blows(), Data(), CFG, 0, lambda it, **_: it, lambda where: None)
    with pytest.raises(Exception, match=r"training loss became (inf|nan) at step 12$"):
        trainer.train(Blows(), Data(), {**CFG, "log_every": 1}, 0, lambda it, **_: it, lambda where: None)


# ----------------------------------------------------------------------------- torch.compile


COMPILE_SUITE = """\
name: cmp
seed: 0
defaults:
  train: {steps: STEPS, batch_size: 64, lr: 2.0e-3}
  eval: {num_samples: 64, batch_size: 64, grid: 0}
matrix:
  dataset: [toy2d/8gaussians]
  family:
    - {name: ddpm, network: {name: mlp, hidden: 32COMPILE}}
  sampler: [{name: ddim, steps: 4}]
metrics: [METRICS]
"""


def compile_case(workdir, value: str, steps: int = 30, metrics: str = "swd"):
    from bench.plugins import get_manager

    manager = get_manager()
    (workdir / "c.yaml").write_text(COMPILE_SUITE.replace("COMPILE", value).replace("STEPS", str(steps))
                                        .replace("METRICS", metrics))
    (case,) = load_suite(workdir / "c.yaml", manager.registries, manager.versions()).cases
    return case


def test_compile_is_off_by_default_hashed_and_in_the_case_id(workdir):
    plain = compile_case(workdir, ", compile: false")
    assert "compile" not in plain.family["network"]  # off: the spec (and hash) of a network without the key
    assert plain.hash == compile_case(workdir, "").hash
    on = compile_case(workdir, ", compile: true")
    assert on.family["network"]["compile"] is True
    assert on.hash != plain.hash and on.train_key != plain.train_key and on.id != plain.id
    with pytest.raises(SuiteError, match="network 'compile' must be true or false"):
        compile_case(workdir, ", compile: sometimes")


def test_compile_true_compiles_the_network_forward_for_training_and_sampling(workdir, monkeypatch):
    """The wiring, with ``torch.compile`` replaced by a recorder: the network built for the case has its
    forward compiled, bench's NFE hooks still count its calls, and the case trains and samples."""
    compiled_calls = []

    def fake_compile(fn, **kw):
        def wrapped(*args, **kwargs):
            compiled_calls.append(fn.__self__.__class__.__name__)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    case = compile_case(workdir, ", compile: true", steps=5, metrics="")
    settings = RunSettings(store=str(workdir / "store"), results_dir=str(workdir / "res"), quiet=True)
    record = run_case(CaseJob(case.to_dict(), settings))
    assert record["status"] == "ok", record.get("error")
    assert record["metrics"]["nfe"] == 4  # the counter hook sees the compiled network's calls
    assert len(compiled_calls) == 5 + 4 and set(compiled_calls) == {"TimeMLP"}  # training steps + sampling
    assert record["config"]["family"]["network"]["compile"] is True  # logged with the case's params


@pytest.mark.slow  # torch.compile of a small MLP takes about a minute on a loaded 2-core CPU
def test_compiled_case_matches_the_eager_case(workdir):
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(2))
    except Exception as exc:  # noqa: BLE001 - no C++ compiler for inductor, or an unsupported platform
        pytest.skip(f"torch.compile does not work on this machine: {type(exc).__name__}: {exc}")
    settings = RunSettings(store=str(workdir / "store"), results_dir=str(workdir / "res"), quiet=True)
    eager = run_case(CaseJob(compile_case(workdir, ", compile: false").to_dict(), settings))
    fast = run_case(CaseJob(compile_case(workdir, ", compile: true").to_dict(), settings))
    assert eager["status"] == fast["status"] == "ok", (eager.get("error"), fast.get("error"))
    # the same maths, fused differently: equal to float32 tolerance, not bit for bit
    ours, theirs = [v for _, v in fast["series"]["train_loss"]], [v for _, v in eager["series"]["train_loss"]]
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert fast["metrics"]["swd"] == pytest.approx(eager["metrics"]["swd"], rel=1e-2, abs=1e-3)


# ----------------------------------------------------------------------------- torch-fidelity's device


def test_torch_fidelity_runs_on_the_case_device(monkeypatch):
    import contextlib

    import torch_fidelity.utils as tfu
    from bench_metrics import fidelity

    seen = []

    class Ext:
        feature_layer = "f"
        threads = None

        def fidelity_kwargs(self):
            return {"feature_extractor": "probe"}

    def create(name, layers, cuda, **kw):
        seen.append(("create", cuda))
        return object()

    def features(dataset, module, batch_size, cuda, save_cpu_ram, verbose):
        seen.append(("extract", cuda))
        return {"f": torch.zeros(len(dataset), 3)}

    monkeypatch.setattr(tfu, "create_feature_extractor", create)
    monkeypatch.setattr(tfu, "get_featuresdict_from_dataset", features)
    monkeypatch.setattr(fidelity, "register_with_torch_fidelity", lambda: None)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())  # no GPU needed here
    monkeypatch.setattr(fidelity, "_MODULES", {})
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)

    def on(device=None):  # the metric sets its extractor's device from the case's build context
        ext = Ext()
        if device:
            ext.device = device
        return ext
    fidelity.extract_features(on(), images, 2)
    fidelity.extract_features(on("cuda"), images, 2)
    fidelity.extract_features(on("cuda:0"), images, 2)
    assert seen == [("create", False), ("extract", False), ("create", True), ("extract", True), ("extract", True)]
