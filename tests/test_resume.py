"""Long training (issue 15, item 6): ``train.checkpoint_every`` saves the resumable training state;
an interrupted training resumes from it bit-identically; a longer training continues its finished
shorter parent. The oracle throughout is the same training run straight through, uninterrupted."""
import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from bench import train_state, trainer
from bench.cli import app
from bench.store import Store
from bench.suite import load_suite
from bench_resumeplug import Denoiser

CFG = {"steps": 40, "batch_size": 16, "lr": 1e-2, "ema": 0.9, "grad_clip": 0.5, "weight_decay": 1e-3,
       "warmup": 5, "log_every": None, "checkpoint_every": 7}


class Points:
    def __init__(self):
        self.x = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))

    def split(self, name):
        return self.x


def family(init_seed=0):
    torch.manual_seed(init_seed)
    return Denoiser(context=SimpleNamespace(data=SimpleNamespace(dim=2)))


def run(fam, cfg, **kw):
    torch.manual_seed(123)  # the runner seeds torch's global generator before a case (dropout reads it)
    return trainer.train(fam, Points(), cfg, seed=5, progress=lambda it, **_: it,
                         check_deadline=kw.pop("check", lambda where: None), **kw)


def progress(store, cfg, key="k", lineage="L"):
    return train_state.Progress(store, key, lineage, cfg["steps"], notes.append)


notes: list[str] = []


def assert_same_training(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for k in a["ema_state"]:
        assert torch.equal(a["ema_state"][k], b["ema_state"][k]), k
    assert a["steps"] == b["steps"]


def stop_after(n):
    calls = []

    def check(where):
        calls.append(where)
        if len(calls) == n:
            raise KeyboardInterrupt("interrupted")
    return check


def test_an_interrupted_training_resumes_bit_identically(tmp_path):
    straight = run(family(), CFG)
    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(family(), CFG, save=progress(store, CFG).save, check=stop_after(17))  # steps 0..16 ran
    start = progress(store, CFG).start(family(), with_ema=True)
    assert (start.step, start.train_key) == (14, "k")  # the last multiple of checkpoint_every
    torch.manual_seed(999)  # a different global generator and initialisation: both are restored
    resumed = run(family(init_seed=7), CFG, start=start, save=progress(store, CFG).save)
    assert_same_training(resumed, straight)
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert int(resumed["state"]["steps_seen"]) == 40


def test_checkpointing_does_not_change_the_training(tmp_path):
    plain = run(family(), {**CFG, "checkpoint_every": None})
    saved = run(family(), CFG, save=progress(Store(tmp_path), CFG).save)
    assert_same_training(plain, saved)
    assert plain["loss_curve"] == saved["loss_curve"]


def test_two_slots_the_newest_survives_a_failed_save_and_a_finished_training_keeps_one(tmp_path, monkeypatch):
    store = Store(tmp_path)
    prog = progress(store, CFG)
    with pytest.raises(KeyboardInterrupt):
        run(family(), CFG, save=prog.save, check=stop_after(30))  # saves at 7, 14, 21, 28
    assert sorted(m["step"] for _, m in store.entries(train_state.KIND)) == [21, 28]

    def torn_save(obj, path):  # a kill in the middle of writing the next state
        path.write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")
    monkeypatch.setattr(train_state.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        prog.save({"step": 35}, False)
    monkeypatch.undo()
    assert progress(store, CFG).start(family(), with_ema=True).step == 28
    run(family(), CFG, start=progress(store, CFG).start(family(), True), save=prog.save)
    assert [m["step"] for _, m in store.entries(train_state.KIND)] == [40]  # the final state only
    assert not list(tmp_path.glob(f"{train_state.KIND}/*/.*"))  # no temporary or trash directory left


def test_an_unusable_saved_state_is_evicted_and_the_other_slot_used(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(family(), CFG, save=progress(store, CFG).save, check=stop_after(30))
    newest = next(k for k, m in store.entries(train_state.KIND) if m["step"] == 28)
    state = torch.load(store.get(train_state.KIND, newest) / "state.pt", weights_only=True)
    state["model"]["net.0.weight"] = torch.zeros(5, 5)  # well-formed, wrong shape
    store.put(train_state.KIND, newest, lambda d: torch.save(state, d / "state.pt"),
              meta=store.peek(train_state.KIND, newest))
    notes.clear()
    start = progress(store, CFG).start(family(), with_ema=True)
    assert start.step == 21
    assert len(notes) == 1 and "do not match" in notes[0] and store.get(train_state.KIND, newest) is None


def test_a_longer_training_continues_its_finished_parent(tmp_path):
    """Warm-up and EMA warm-up count from step 0 and Adam has no horizon, so 30 steps then 60 are a
    straight 60-step training, bit for bit; with log_every=1 (the default below 400 steps) so is the curve."""
    store = Store(tmp_path)
    short, long = {**CFG, "steps": 30}, {**CFG, "steps": 60}
    run(family(), short, save=progress(store, short, key="short").save)
    start = progress(store, long, key="long").start(family(), with_ema=True)
    assert (start.step, start.train_key) == (30, "short")
    continued = run(family(), long, start=start)
    straight = run(family(), long)
    assert_same_training(continued, straight)
    assert continued["loss_curve"] == straight["loss_curve"]
    # a longer training is never continued from a parent with more steps, nor one of another lineage
    assert progress(store, {**CFG, "steps": 20}, key="shorter").start(family(), True) is None
    assert progress(store, long, key="other", lineage="M").start(family(), True) is None


@pytest.mark.slow
def test_continuation_across_a_change_of_the_default_loss_interval(tmp_path):
    """log_every defaults to steps // 200: 400 steps log every 2, 800 every 4. The weights are still
    those of the straight run; the curve keeps the parent's points and continues at the new interval."""
    store = Store(tmp_path)
    short, long = {**CFG, "steps": 400}, {**CFG, "steps": 800}
    parent = run(family(), short, save=progress(store, short, key="short").save)
    continued = run(family(), long, start=progress(store, long, key="long").start(family(), True))
    straight = run(family(), long)
    assert_same_training(continued, straight)
    tail = [p for p in straight["loss_curve"] if p[0] > 400]
    assert continued["loss_curve"] == parent["loss_curve"] + tail
    assert continued["loss_curve"] != straight["loss_curve"]


def test_a_time_budget_failure_is_resumable_only_while_the_saved_state_advances(tmp_path):
    store = Store(tmp_path)
    error = "BudgetExceeded: time budget exceeded: timeout_s=1 s, during training"
    trainer.record_failure(store, "k", error, 1.0)  # nothing saved: blocks as before
    assert trainer.earlier_failure(store, "k", 1.0) == error
    prog = progress(store, CFG)
    prog.save({"step": 7}, False)
    trainer.record_failure(store, "k", error, 1.0)
    assert trainer.earlier_failure(store, "k", 1.0) is None  # advanced: the next run resumes
    trainer.record_failure(store, "k", error, 1.0)
    assert trainer.earlier_failure(store, "k", 1.0) == error  # no progress since: blocks
    prog.save({"step": 14}, False)
    trainer.record_failure(store, "k", error, 1.0)
    assert trainer.earlier_failure(store, "k", 1.0) is None
    trainer.record_failure(store, "k", "RuntimeError: boom", 1.0)  # not a budget: blocks
    assert trainer.earlier_failure(store, "k", 1.0) == "RuntimeError: boom"


SUITE = """\
name: long
defaults:
  train: {steps: STEPS, batch_size: 16, lr: 0.01, ema: 0.9, warmup: 5, EXTRA}
matrix:
  dataset: [toy2d/moons]
  family: [denoiser]
"""


def write_suite(workdir, steps=40, extra="checkpoint_every: 7"):
    (workdir / "s.yaml").write_text(SUITE.replace("STEPS", str(steps)).replace("EXTRA", extra))
    return "s.yaml"


def bench_run(*args):
    return CliRunner().invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_resumeplug", *args])


def stored(workdir, store, key=None):
    paths = sorted((workdir / store).glob(f"checkpoints/*/{key or '*'}/checkpoint.pt"))
    assert len(paths) == 1, paths
    return torch.load(paths[0], weights_only=True), json.loads((paths[0].parent / "entry.json").read_text())["meta"]


def case_records(workdir):
    return [json.loads(p.read_text()) for p in sorted(workdir.glob("results/long/*/cases/*/record.json"))]


def test_hashes_checkpoint_every_is_not_hashed_steps_is(workdir):
    from bench.plugins import get_manager

    manager = get_manager(("bench_resumeplug",))

    def case(**kw):
        write_suite(workdir, **kw)
        return load_suite(workdir / "s.yaml", manager.registries, manager.versions()).cases[0]

    plain, every, longer = case(extra="grad_clip: 1.0"), case(extra="grad_clip: 1.0, checkpoint_every: 7"), \
        case(steps=80, extra="grad_clip: 1.0")
    assert "checkpoint_every" not in plain.config()["train"]  # hashes of suites without it are unchanged
    assert every.config()["train"]["checkpoint_every"] == 7  # logged as a param when set
    assert (plain.hash, plain.train_key, plain.lineage_key) == (every.hash, every.train_key, every.lineage_key)
    assert longer.train_key != plain.train_key and longer.hash != plain.hash
    assert longer.lineage_key == plain.lineage_key


def run_in_worker(workdir, store, **kw):
    """One case through the runner as an executor runs it (no MLflow): its record."""
    from bench.plugins import get_manager
    from bench.runner import CaseJob, RunSettings, run_case

    manager = get_manager(("bench_resumeplug",))
    write_suite(workdir, **kw)
    case = load_suite(workdir / "s.yaml", manager.registries, manager.versions()).cases[0]
    settings = RunSettings(store=str(workdir / store), results_dir=str(workdir / "results"),
                           plugins=("bench_resumeplug",), quiet=True)
    return run_case(CaseJob(case.to_dict(), settings))


def test_the_runner_resumes_an_interrupted_training_and_records_it(workdir, monkeypatch):
    monkeypatch.setenv("BENCH_RESUME_STOP_AT", "17")
    first = run_in_worker(workdir, "store")
    assert first["status"] == "failed" and "saved at step 14 of 40" in " ".join(first["notes"])
    monkeypatch.delenv("BENCH_RESUME_STOP_AT")
    assert run_in_worker(workdir, "store")["error"].endswith("`bench run --retry-failed` retrains it)")
    trainer.clear_failures(Store(workdir / "store"), [first["train_key"]])  # what --retry-failed does
    second = run_in_worker(workdir, "store")
    assert second["status"] == "ok" and second["train_resumed"] == {"step": 14, "train_key": first["train_key"]}
    resumed, meta = stored(workdir, "store")
    assert (meta["resumed_from_step"], meta["parent"]) == (14, None)
    straight = run_in_worker(workdir, "straight", extra="checkpoint_every: null")
    assert "train_resumed" not in straight
    oracle, _ = stored(workdir, "straight")
    for k in oracle["state"]:
        assert torch.equal(resumed["state"][k], oracle["state"][k]), k
        assert torch.equal(resumed["ema_state"][k], oracle["ema_state"][k]), k
    assert resumed["loss_curve"] == oracle["loss_curve"]


@pytest.mark.slow
def test_bench_run_resumes_an_interrupted_training_and_logs_it(workdir, monkeypatch):
    write_suite(workdir)
    monkeypatch.setenv("BENCH_RESUME_STOP_AT", "17")
    first = bench_run()
    assert first.exit_code == 1, first.output
    assert "saved at step 14 of 40" in " ".join(case_records(workdir)[0]["notes"])
    monkeypatch.delenv("BENCH_RESUME_STOP_AT")
    second = bench_run("--retry-failed")  # the crash was recorded as a failed training: retry it
    assert second.exit_code == 0, second.output
    rec = [r for r in case_records(workdir) if r["status"] == "ok"][0]
    assert rec["train_resumed"]["step"] == 14 and "training resumed from step 14" in " ".join(rec["notes"])
    resumed, meta = stored(workdir, ".bench-store")
    assert meta["resumed_from_step"] == 14 and meta["parent"] is None
    from bench.tracking import search_runs_frame
    runs = search_runs_frame("sqlite:///" + str(workdir / "mlflow.db"), ["long"],
                             filter_string="tags.`bench.kind` = 'case'")
    assert set(runs["tags.bench.train_resumed_from"].dropna()) == {f"step 14 of {rec['train_key'][:16]}"}
    # the oracle: the same suite trained straight through in another store
    assert bench_run("--no-resume", "--store", "straight").exit_code == 0
    straight, _ = stored(workdir, "straight")
    for k in straight["state"]:
        assert torch.equal(resumed["state"][k], straight["state"][k]), k
        assert torch.equal(resumed["ema_state"][k], straight["ema_state"][k]), k


@pytest.mark.slow
def test_raising_steps_continues_the_finished_training(workdir):
    write_suite(workdir, steps=30)
    assert bench_run().exit_code == 0
    (parent_rec,) = case_records(workdir)
    result = bench_run("--set", "train.steps=60")
    assert result.exit_code == 0, result.output
    child_rec = [r for r in case_records(workdir) if r["train_key"] != parent_rec["train_key"]][0]
    child, meta = stored(workdir, ".bench-store", child_rec["train_key"])
    assert meta["parent"] == parent_rec["train_key"] and meta["resumed_from_step"] == 30
    assert bench_run("--set", "train.steps=60", "--no-resume", "--store", "straight").exit_code == 0
    straight, _ = stored(workdir, "straight")
    for k in straight["state"]:
        assert torch.equal(child["state"][k], straight["state"][k]), k


@pytest.mark.slow
def test_a_training_longer_than_its_time_budget_finishes_over_several_runs(workdir):
    """Each run trains until its budget (timeout_s: 12 for 200 steps of 0.1 s; a fresh worker also
    spends seconds importing torch) and saves every 5 steps; the failure is resumable while the saved
    step advances, so repeated `bench run`s finish the training, with the weights of a straight run."""
    text = SUITE.replace("STEPS", "200").replace("EXTRA", "checkpoint_every: 5") \
        .replace("[denoiser]", "[{name: denoiser, sleep_s: 0.1}]")
    (workdir / "s.yaml").write_text(text.replace("defaults:\n", "defaults:\n  budget: {timeout_s: 12}\n"))
    failures = []
    for _ in range(8):
        result = bench_run()
        rec = max(case_records(workdir), key=lambda r: r["finished"])
        if result.exit_code == 0:
            break
        assert "time budget exceeded" in rec["error"], rec["error"]
        failures.append(rec)
    assert result.exit_code == 0 and failures, result.output
    assert rec["train_resumed"]["step"] > 0
    steps = [f["train_resumed"]["step"] for f in failures if "train_resumed" in f] + [rec["train_resumed"]["step"]]
    assert steps == sorted(set(steps)), steps  # every run went further
    resumed, _ = stored(workdir, ".bench-store")
    (workdir / "s.yaml").write_text(text.replace("sleep_s: 0.1", "sleep_s: 0.0"))  # no budget, no sleep
    assert bench_run("--store", "straight").exit_code == 0
    straight, _ = stored(workdir, "straight")
    for k in straight["state"]:
        assert torch.equal(resumed["state"][k], straight["state"][k]), k


def test_replacing_a_store_entry_never_leaves_it_missing_while_the_old_one_is_deleted(tmp_path, monkeypatch):
    """Regression: Store.put deleted the old entry (rmtree) before renaming the new one into place, so a
    kill during that delete (long for a large checkpoint) left no entry at all."""
    import shutil

    store = Store(tmp_path)
    store.put("kind", "key", lambda d: (d / "f.txt").write_text("old"))
    seen = []
    real = shutil.rmtree

    def rmtree(path, *a, **kw):
        entry = store.get("kind", "key")
        seen.append(None if entry is None else (entry / "f.txt").read_text())
        return real(path, *a, **kw)
    monkeypatch.setattr("bench.store.shutil.rmtree", rmtree)
    store.put("kind", "key", lambda d: (d / "f.txt").write_text("new"))
    assert seen == ["new"]


@pytest.mark.slow
def test_a_sigterm_during_training_is_resumed_by_the_next_bench_run(workdir):
    import os
    import signal
    import subprocess
    import sys
    import time

    write_suite(workdir, steps=100, extra="checkpoint_every: 5")
    text = (workdir / "s.yaml").read_text()
    (workdir / "s.yaml").write_text(text.replace("[denoiser]", "[{name: denoiser, sleep_s: 0.05}]"))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "s.yaml", "-q", "--plugins", "bench_resumeplug"],
                            cwd=workdir, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(workdir.glob(f".bench-store/{train_state.KIND}/*/*/entry.json")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    result = bench_run()
    assert result.exit_code == 0, result.output
    rec = max(case_records(workdir), key=lambda r: r["finished"])
    assert 5 <= rec["train_resumed"]["step"] < 100
    resumed, _ = stored(workdir, ".bench-store")
    (workdir / "s.yaml").write_text(text)  # no sleep: the same training
    assert bench_run("--store", "straight").exit_code == 0
    straight, _ = stored(workdir, "straight")
    for k in straight["state"]:
        assert torch.equal(resumed["state"][k], straight["state"][k]), k
