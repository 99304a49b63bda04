"""Processes and failures (docs/reliability.md): hostile components fail their case only, budgets
hold when a component never returns, signals stop every executor, workers die with the driver,
stale parent runs are closed, bad checkpoints are evicted, failed trainings are not repeated."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.tracking import search_runs_frame

BASE = """\
name: proc
defaults:
  train: {steps: 20, batch_size: 32, lr: 0.05}
  eval: {num_samples: 32, batch_size: 32}
matrix:
  dataset: [toy2d/moons]
  family:
FAMILIES
  sampler:
SAMPLERS
metrics: [mean_err]
"""


def write_suite(workdir, samplers, families=("fitgauss",), extra=""):
    text = (BASE.replace("SAMPLERS", "\n".join(f"    - {s}" for s in samplers))
            .replace("FAMILIES", "\n".join(f"    - {f}" for f in families)) + extra)
    (workdir / "s.yaml").write_text(text)
    return "s.yaml"


def invoke(*args):
    return CliRunner().invoke(app, ["run", *args, "-q", "--plugins", "bench_testplug"])


def records(workdir):
    out = {}
    for p in workdir.glob("results/proc/*/cases/*/record.json"):
        r = json.loads(p.read_text())
        out[f"{r['labels']['family']}/{r['labels']['sampler']}"] = r
    return out


def runs(workdir):
    return search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["proc"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def start_driver(workdir, *args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "s.yaml", "-q", "--plugins", "bench_testplug",
                             *args], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for(predicate, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------- a component ends or hangs
def test_exit_interrupt_and_base_exceptions_fail_their_case_only(workdir):
    """Before: sys.exit() in a sampler ended the suite with exit 0 and the parent run RUNNING."""
    path = write_suite(workdir, ["{name: gauss, crash: exit, id: exits}", "{name: gauss, crash: interrupt, id: ctrlc}",
                                 "{name: gauss, crash: base, id: base}", "{name: gauss, id: fine}"])
    result = invoke(path)
    assert result.exit_code == 1, result.output
    recs = records(workdir)
    assert recs["fitgauss/fine"]["status"] == "ok"
    for sampler, kind in [("exits", "SystemExit"), ("ctrlc", "KeyboardInterrupt"), ("base", "Hostile")]:
        rec = recs[f"fitgauss/{sampler}"]
        assert rec["status"] == "failed" and rec["error"].startswith(kind), rec
        assert kind in (Path(rec["case_dir"]) / "traceback.txt").read_text()
    assert len(list(workdir.glob("results/proc/*/summary.md"))) == 1
    assert runs(workdir).query("`tags.bench.kind` == 'suite'")["status"].tolist() == ["FAILED"]


def test_a_sampler_that_never_returns_is_stopped_at_its_budget(workdir):
    """Before: a sampler sleeping 10**6 s hung the suite (the deadline was only checked cooperatively)."""
    path = write_suite(workdir, ["{name: gauss, steps: 2, id: before}",  # trains the shared model
                                 "{name: gauss, crash: hang, id: hangs, budget: {timeout_s: 1}}",
                                 "{name: gauss, steps: 2, id: after}"])
    start = time.monotonic()
    result = invoke(path)
    assert result.exit_code == 1, result.output
    recs = records(workdir)
    assert recs["fitgauss/hangs"]["status"] == "failed"
    assert "time budget exceeded: timeout_s=1 s" in recs["fitgauss/hangs"]["error"]
    assert "during sample" in recs["fitgauss/hangs"]["error"]
    assert recs["fitgauss/before"]["status"] == recs["fitgauss/after"]["status"] == "ok"
    assert time.monotonic() - start < 90  # worker start-up on a busy machine, not 10**6 s


def test_a_huge_training_stops_at_its_budget(workdir):
    """Before: the deadline was checked every steps/200 steps, so 10**9 steps ran for minutes."""
    path = write_suite(workdir, ["gauss"])
    start = time.monotonic()
    result = invoke(path, "--set", "train.steps=1000000000", "--set", "budget.timeout_s=1")
    assert result.exit_code == 1, result.output
    rec = records(workdir)["fitgauss/gauss"]
    # the runner's own check (every step) or, if one step outlasts the grace, the watchdog
    assert "time budget exceeded: timeout_s=1 s" in rec["error"] and "during training" in rec["error"], rec
    assert time.monotonic() - start < 90


@pytest.mark.slow  # two bench runs
def test_a_failed_training_is_recorded_once_and_retried_on_request(workdir):
    """Before: a training past its budget was trained again by every case that needed it."""
    path = write_suite(workdir, ["gauss", "{name: gauss, steps: 5}"],
                       families=["{name: fitgauss, fail_at: hang, id: hangs}"])
    result = invoke(path, "--set", "budget.timeout_s=1")
    assert result.exit_code == 1, result.output
    recs = sorted(records(workdir).values(), key=lambda r: r["started"])
    first, second = recs
    assert "time budget exceeded: timeout_s=1 s" in first["error"] and "during training" in first["error"]
    assert "its worker was killed" in first["error"]  # the watchdog, the loss never returned
    assert second["error"].startswith(first["error"]) and "failed earlier" in second["error"]
    assert not second.get("trained")
    # --retry-failed trains again (and fails again the same way)
    result = invoke(path, "--retry-failed", "--set", "budget.timeout_s=1")
    assert "1 failed training(s) will be retried" in result.output, result.output
    latest = sorted(workdir.glob("results/proc/*"))[-1]
    errors = sorted(json.loads(p.read_text())["error"] for p in latest.glob("cases/*/record.json"))
    retried = [e for e in errors if "failed earlier" not in e]
    assert len(errors) == 2 and len(retried) == 1 and "worker was killed" in retried[0], errors


def test_a_nan_training_fails_every_case_with_the_same_reason_without_retraining(workdir):
    marker = workdir / "built.txt"
    path = write_suite(workdir, ["gauss", "{name: gauss, steps: 5}"],
                       families=["{name: fitgauss, fail_at: nan, id: broken}"])
    result = CliRunner().invoke(app, ["run", path, "-q", "--plugins", "bench_testplug"],
                                env={"BENCH_TEST_TRAIN_MARKER": str(marker)})
    assert result.exit_code == 1
    errors = [r["error"] for r in records(workdir).values()]
    assert all(e.startswith("CaseFailed: training loss became nan at step 0") for e in errors), errors
    assert [r.get("trained") for r in sorted(records(workdir).values(), key=lambda r: r["started"])] == [True, False]


# ---------------------------------------------------------------- checkpoints
def _rewrite_checkpoint(store: Path, mutate) -> None:
    """Change the stored checkpoint and re-sign its manifest, so only loading can find the defect."""
    from bench.store import file_sha256

    (ckpt,) = store.glob("checkpoints/*/*/checkpoint.pt")
    mutate(ckpt)
    manifest = ckpt.parent / "entry.json"
    info = json.loads(manifest.read_text())
    info["files"]["checkpoint.pt"] = file_sha256(ckpt)
    manifest.write_text(json.dumps(info))


@pytest.mark.slow  # two bench runs
@pytest.mark.parametrize("defect", ["wrong_keys", "truncated"])
def test_a_checkpoint_that_fails_to_load_is_evicted_and_retrained_once(workdir, defect):
    """Before: a well-formed checkpoint with the wrong keys failed every run with KeyError."""
    path = write_suite(workdir, ["gauss"])
    assert invoke(path, "--store", "store").exit_code == 0
    first = records(workdir)["fitgauss/gauss"]["metrics"]["mean_err"]

    def wrong_keys(p):
        torch.save({"state": {"nonsense": torch.zeros(1)}, "ema_state": None, "loss_curve": [[1, 0.5]],
                    "train_time_s": 0.1, "steps": 1}, p)

    def truncated(p):
        p.write_bytes(p.read_bytes()[:100])

    _rewrite_checkpoint(workdir / "store", {"wrong_keys": wrong_keys, "truncated": truncated}[defect])
    result = invoke(path, "--store", "store", "--no-resume")
    assert result.exit_code == 0, result.output
    latest = sorted(workdir.glob("results/proc/*"))[-1]
    (rec,) = [json.loads(p.read_text()) for p in latest.glob("cases/*/record.json")]
    assert rec["status"] == "ok" and rec["trained"]
    assert any("could not be loaded" in n and "evicted and retraining" in n for n in rec["notes"]), rec["notes"]
    assert rec["metrics"]["mean_err"] == first  # retrained from the same initialisation: bit-identical


# ---------------------------------------------------------------- signals and the driver's death
def _stop_test(workdir, executor_args, sig):
    pid_dir = workdir / "pids"
    pid_dir.mkdir()
    path = write_suite(workdir, [f"{{name: gauss, steps: 4000, sleep_s: 0.05, id: long{i}}}" for i in range(4)])
    assert path == "s.yaml"
    proc = start_driver(workdir, *executor_args, env_extra={"BENCH_TEST_PID_DIR": str(pid_dir)})
    n_running = 2 if "process" in executor_args else 1
    assert wait_for(lambda: len(list(pid_dir.glob("*.pid"))) >= n_running), proc.communicate(timeout=5)
    workers = children(proc.pid)
    proc.send_signal(sig)
    start = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10, out
    assert proc.returncode == 130, out
    # the workers are gone; the resource tracker exits as soon as it sees the driver's pipe close
    assert wait_for(lambda: not [p for p in workers if alive(p)], timeout=max(0.5, 10 - (time.monotonic() - start)))
    frame = runs(workdir)
    cases = frame[frame["tags.bench.kind"] == "case"]
    assert sorted(cases["tags.bench.status"]) == ["killed"] * n_running
    assert set(cases["status"]) == {"KILLED"}
    assert frame[frame["tags.bench.kind"] == "suite"]["status"].tolist() == ["KILLED"]
    started = list(workdir.glob("results/proc/*/cases/*"))
    assert len(started) == n_running  # the queued cases never started


@pytest.mark.slow
def test_sigterm_stops_the_process_executor_within_10_s(workdir):
    """Before: SIGTERM to `--executor process` waited for the whole queue."""
    _stop_test(workdir, ["--executor", "process", "--workers", "2"], signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_stops_the_ray_executor_within_10_s(workdir):
    """The Ray executor too: SIGTERM ends the driver within 10 s with the running cases recorded
    killed, the queued ones never started, the case processes gone and the parent run KILLED."""
    pytest.importorskip("ray")
    pid_dir = workdir / "pids"
    pid_dir.mkdir()
    write_suite(workdir, [f"{{name: gauss, steps: 4000, sleep_s: 0.05, id: long{i}}}" for i in range(4)])
    proc = start_driver(workdir, "--executor", "ray", env_extra={"BENCH_TEST_PID_DIR": str(pid_dir)})
    assert wait_for(lambda: len(list(pid_dir.glob("*.pid"))) >= 1, timeout=120), proc.communicate(timeout=5)
    time.sleep(1.0)  # let every case Ray runs at once start
    case_pids = [int(p.stem) for p in pid_dir.glob("*.pid") if p.stem.isdigit()]
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - start < 10, out
    assert proc.returncode == 130, out
    if case_pids:
        assert wait_for(lambda: not [p for p in case_pids if alive(p)], timeout=10)
    frame = runs(workdir)
    cases = frame[frame["tags.bench.kind"] == "case"]
    assert len(cases) >= 1 and set(cases["tags.bench.status"]) == {"killed"}
    assert frame[frame["tags.bench.kind"] == "suite"]["status"].tolist() == ["KILLED"]
    assert len(list(workdir.glob("results/proc/*/cases/*"))) == len(cases) < 4  # queued cases never started


@pytest.mark.slow
def test_sigint_stops_the_local_executor_within_10_s(workdir):
    _stop_test(workdir, [], signal.SIGINT)


@pytest.mark.slow
def test_workers_die_with_a_killed_driver_and_its_parent_run_is_closed(workdir):
    """Before: after kill -9 of the driver its workers and the resource tracker lived on, and the
    parent run stayed RUNNING forever."""
    pid_dir = workdir / "pids"
    pid_dir.mkdir()
    write_suite(workdir, ["{name: gauss, steps: 4000, sleep_s: 0.05, id: a}", "{name: gauss, steps: 4000, sleep_s: 0.05, id: b}"])
    proc = start_driver(workdir, "--executor", "process", "--workers", "2",
                        env_extra={"BENCH_TEST_PID_DIR": str(pid_dir)})
    assert wait_for(lambda: len(list(pid_dir.glob("*.pid"))) >= 2)
    descendants = children(proc.pid)
    assert len(descendants) >= 2
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not [p for p in descendants if alive(p)], timeout=10), \
        [open(f"/proc/{p}/cmdline").read() for p in descendants if alive(p)]
    assert runs(workdir).query("`tags.bench.kind` == 'suite'")["status"].tolist() == ["RUNNING"]
    write_suite(workdir, ["{name: gauss, id: a}"])
    result = invoke("s.yaml")
    assert "was still RUNNING; marked KILLED" in result.output, result.output
    frame = runs(workdir)
    assert sorted(frame[frame["tags.bench.kind"] == "suite"]["status"]) == ["FINISHED", "KILLED"]


def test_only_parent_runs_of_dead_drivers_are_closed(tmp_path):
    """A concurrent bench run (live pid on this host) and runs of other hosts are left alone."""
    from bench.tracking import Tracker, _process_start

    dead = subprocess.Popen(["true"])
    dead.wait()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    host = socket.gethostname()
    me = {"bench.host": host, "bench.pid": str(os.getpid()), "bench.pid_start": _process_start(os.getpid())}
    cases = {"live": me, "dead": {"bench.host": host, "bench.pid": str(dead.pid), "bench.pid_start": "1"},
             "reused": {**me, "bench.pid_start": "1"}, "elsewhere": {"bench.host": "other-host", "bench.pid": "1"}}
    ids = {}
    for name, tags in cases.items():
        ids[name] = tracker.client.create_run(tracker.experiment_id, tags={"bench.kind": "suite", **tags}).info.run_id
    closed = set(tracker.close_stale_parents())
    assert closed == {ids["dead"], ids["reused"]}
    status = {name: tracker.client.get_run(i).info.status for name, i in ids.items()}
    assert status == {"live": "RUNNING", "dead": "KILLED", "reused": "KILLED", "elsewhere": "RUNNING"}
