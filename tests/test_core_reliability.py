"""Budgets, crashes, interruption and parallel executors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.tracking import search_runs_frame

BASE = """\
name: rel
defaults:
  train: {steps: 40, batch_size: 64, lr: 0.05}
  eval: {num_samples: 64, batch_size: 32}
matrix:
  dataset: [toy2d/moons]
  family: [fitgauss]
  sampler:
SAMPLERS
metrics: [mean_err]
"""


def suite(workdir, samplers, extra=""):
    text = BASE.replace("SAMPLERS", "\n".join(f"    - {s}" for s in samplers)) + extra
    (workdir / "s.yaml").write_text(text)
    return "s.yaml"


def records(workdir):
    return {json.loads(p.read_text())["labels"]["sampler"]: json.loads(p.read_text())
            for p in workdir.glob("results/rel/*/cases/*/record.json")}


def test_nfe_and_time_budgets_fail_their_case_only(workdir):
    path = suite(workdir, ["{name: gauss, steps: 3, id: fine}",
                           "{name: gauss, steps: 50, id: hungry, budget: {max_nfe: 10}}",
                           "{name: gauss, steps: 200, sleep_s: 0.02, id: slow, budget: {timeout_s: 0.5}}"])
    result = CliRunner().invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 1
    recs = records(workdir)
    assert recs["fine"]["status"] == "ok"
    assert recs["hungry"]["status"] == "failed" and "NFE budget of 10 exceeded" in recs["hungry"]["error"]
    assert recs["slow"]["status"] == "failed" and "time budget exceeded: timeout_s=0.5 s" in recs["slow"]["error"]


def test_a_sampler_exception_fails_only_its_case(workdir):
    path = suite(workdir, ["gauss", "{name: gauss, crash: raise, id: boom}"])
    result = CliRunner().invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 1
    recs = records(workdir)
    assert recs["gauss"]["status"] == "ok"
    assert recs["boom"]["status"] == "failed" and "sampler blew up" in recs["boom"]["error"]
    tb = Path(recs["boom"]["case_dir"]) / "traceback.txt"
    assert "ValueError: sampler blew up" in tb.read_text()


def test_process_executor_gives_the_same_metrics_as_local(workdir):
    path = suite(workdir, ["gauss", "{name: gauss, steps: 5}", "{name: gauss, steps: 9}"])
    runner = CliRunner()
    assert runner.invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"]).exit_code == 0
    result = runner.invoke(app, ["run", path, "-q", "--no-resume", "--executor", "process", "--workers", "2",
                                 "--plugins", "bench_testplug", "--store", "store2"])
    assert result.exit_code == 0, result.output
    runs = search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["rel"], filter_string="tags.`bench.kind` = 'case'")
    assert len(runs) == 6
    for _, group in runs.groupby("tags.bench.case_id"):
        assert group["metrics.mean_err"].nunique() == 1, group["metrics.mean_err"]
        assert group["metrics.nfe"].nunique() == 1
    # the three cases share one model: trained once even in parallel
    assert len(list((workdir / "store2").glob("checkpoints/*/*/checkpoint.pt"))) == 1
    trained = runs[runs["tags.bench.trained"] == "true"]
    assert len(trained) == 2  # one per executor run


def test_a_crashing_worker_fails_its_case_only(workdir):
    path = suite(workdir, ["gauss", "{name: gauss, crash: segfault, id: dies}", "{name: gauss, steps: 4}"])
    result = CliRunner().invoke(app, ["run", path, "-q", "--executor", "process", "--workers", "2",
                                      "--plugins", "bench_testplug"])
    assert result.exit_code == 1, result.output
    runs = search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["rel"], filter_string="tags.`bench.kind` = 'case'")
    status = dict(zip(runs["tags.bench.sampler"], runs["tags.bench.status"]))
    assert status == {"gauss": "ok", "dies": "failed", "gauss[steps=4]": "ok"}
    assert "crashed" in runs[runs["tags.bench.sampler"] == "dies"]["tags.bench.error"].iloc[0]


def test_sigterm_marks_the_running_case_killed_and_resume_finishes(workdir):
    path = suite(workdir, ["{name: gauss, id: quick}", "{name: gauss, steps: 400, sleep_s: 0.05, id: long}",
                           "{name: gauss, steps: 2, id: later}"])
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", path, "-q", "--plugins", "bench_testplug"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        recs = list(workdir.glob("results/rel/*/cases/*long*/case.yaml"))
        if recs:
            break
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    runs = search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["rel"])
    cases = runs[runs["tags.bench.kind"] == "case"]
    status = dict(zip(cases["tags.bench.sampler"], cases["tags.bench.status"]))
    assert status == {"quick": "ok", "long": "killed"}
    assert cases[cases["tags.bench.sampler"] == "long"]["status"].iloc[0] == "KILLED"
    assert runs[runs["tags.bench.kind"] == "suite"]["status"].iloc[0] == "KILLED"
    # resume: only the unfinished cases run again (the long one made short with --set-like edit)
    suite(workdir, ["{name: gauss, id: quick}", "{name: gauss, steps: 400, sleep_s: 0.0, id: long}",
                    "{name: gauss, steps: 2, id: later}"])
    result = CliRunner().invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    assert "1 already finished" in result.output and "[2/2]" in result.output


def test_ray_executor_gives_the_same_metrics_as_local(workdir):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e .[ray]")
    path = suite(workdir, ["gauss", "{name: gauss, steps: 5}"])
    runner = CliRunner()
    assert runner.invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"]).exit_code == 0
    result = runner.invoke(app, ["run", path, "-q", "--no-resume", "--executor", "ray", "--workers", "2",
                                 "--plugins", "bench_testplug", "--store", "store-ray"])
    assert result.exit_code == 0, result.output
    runs = search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["rel"],
                             filter_string="tags.`bench.kind` = 'case'")
    assert len(runs) == 4
    for _, group in runs.groupby("tags.bench.case_id"):
        assert group["metrics.mean_err"].nunique() == 1
    pids = {json.loads(p.read_text())["pid"] for p in workdir.glob("results/rel/*/cases/*/record.json")}
    assert os.getpid() not in pids and len(pids) >= 2  # local and Ray cases ran in worker processes


def _open_tracker(args):
    from bench.tracking import Tracker

    uri, name = args
    return Tracker(uri, name).experiment_id


def test_concurrent_runs_on_a_new_sqlite_store(tmp_path):
    """Several `bench run` starting at once on a new mlflow.db: the schema is created once, under a
    file lock, and every process gets its experiment (unlocked, MLflow's migrations race)."""
    import multiprocessing as mp

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mp.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_open_tracker, [(uri, f"exp{i}") for i in range(3)])
    assert len(set(ids)) == 3
