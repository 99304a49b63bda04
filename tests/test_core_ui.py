"""`bench ui` (issue 13, item 6): it opens the experiment's runs table through a saved view with the
suite's key metrics as columns, picks the experiment bench logged last, and stopping it stops the
MLflow server with all its workers."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import UserError
from bench.tracking import Tracker
from bench.ui import (SHARED_VIEW_TAG, VIEW_KEY, group_members, key_columns, pick_experiment,
                      runs_view_url, save_key_metrics_view)


def log_suite(uri, experiment, metrics, requested, started):
    """A parent run and one case run as bench logs them (no training needed for the UI)."""
    tracker = Tracker(uri, experiment)
    tracker.start_parent(f"{experiment}@x", {"suite": experiment}, {"bench.suite": experiment})
    record = {"case_id": f"{experiment}/toy/fam/samp/seed=0", "case_hash": "h0", "status": "ok", "started": started,
              "finished": started + 1, "labels": {"dataset": "toy", "family": "fam", "sampler": "samp", "seed": 0},
              "config": {"metrics": [{"name": m} for m in requested], "seed": 0}, "metrics": metrics}
    tracker.log_case(record)
    tracker.end_parent("FINISHED", {}, None)
    return tracker.experiment_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating an MLflow database takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('uistore')}/mlflow.db"
    old = log_suite(uri, "older", {"mean_err": 0.1}, ["mean_err"], time.time() - 100)
    new = log_suite(uri, "newer", {"fid": 3.0, "custom": 0.5, "nfe": 10.0, "train_time_s": 1.0, "final_loss": 0.2,
                                   "kid": 0.1}, ["custom", "fid", "kid"], time.time())
    return uri, old, new


def test_runs_view_url_is_mlflow3_runs_route():
    assert runs_view_url("http://h:1/", "7", "k") == "http://h:1/#/experiments/7/runs?viewStateShareKey=k"
    assert runs_view_url("http://h:1", None, None) == "http://h:1/#/experiments"


def test_default_experiment_is_the_one_bench_logged_last_and_names_are_checked(store):
    uri, old, new = store
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name("not-bench") is None:
        client.create_experiment("not-bench")  # created last, but holds no bench run
    assert pick_experiment(client, None).experiment_id == new
    assert pick_experiment(client, "older").experiment_id == old
    with pytest.raises(UserError, match="unknown experiment 'oldr'.*did you mean 'older'"):
        pick_experiment(client, "oldr")


def test_saved_view_has_the_key_metrics_as_columns_in_mlflow_ui_format(store):
    uri, _, new = store
    client = MlflowClient(tracking_uri=uri)
    assert save_key_metrics_view(client, new) == VIEW_KEY
    # the value is the page state itself, whose top-level keys the MLflow 3 UI picks
    state = json.loads(client.get_experiment(new).tags[SHARED_VIEW_TAG + VIEW_KEY])
    # labels, then headline metrics in bench's order, the suite's own metric, then NFE and training time;
    # bookkeeping like final_loss is left out
    assert state["selectedColumns"] == ["tags.`bench.dataset`", "tags.`bench.family`", "tags.`bench.sampler`",
                                        "tags.`bench.seed`", "metrics.`fid`", "metrics.`kid`", "metrics.`custom`",
                                        "metrics.`nfe`", "metrics.`train_time_s`"]
    assert state["searchFilter"] == "tags.`bench.kind` = 'case'"
    # the filter finds exactly the case runs (the UI sends it to the same search API)
    runs = client.search_runs([new], filter_string=state["searchFilter"])
    assert [r.data.tags["bench.kind"] for r in runs] == ["case"]
    save_key_metrics_view(client, new)  # refreshing rewrites the same view
    assert json.loads(client.get_experiment(new).tags[SHARED_VIEW_TAG + VIEW_KEY]) == state
    assert key_columns(client, new) == state["selectedColumns"]


def log_with_intervals(uri):
    """Experiment ``withci``: two case runs (sample seeds 0 and 1 of training seed 0) with per-case
    intervals, logged without a parent run (so that "newer" stays the experiment bench logged last)."""
    tracker = Tracker(uri, "withci")
    started = time.time() - 300
    run_id = None
    for sample_seed in (0, 1):
        record = {"case_id": f"withci/toy/fam/samp/seed=0/sample_seed={sample_seed}", "case_hash": f"h{sample_seed}",
                  "status": "ok", "started": started, "finished": started + 1, "sample_seed": sample_seed,
                  "labels": {"dataset": "toy", "family": "fam", "sampler": "samp", "seed": "0"},
                  "config": {"metrics": [{"name": "fid"}, {"name": "bpd"}, {"name": "swd"}], "seed": 0},
                  "metrics": {"fid": 3.0, "fid_ci_lo": 2.71828, "fid_ci_hi": 3.14159, "bpd": 1.5, "bpd_sem": 0.01,
                              "swd": 0.2, "swd_ci_lo": float("nan"), "swd_ci_hi": 0.3}}
        run_id = tracker.log_case(record)
    return tracker.experiment_id, run_id, started


def test_the_view_shows_each_metric_with_its_per_case_interval_and_the_sample_seed(store):
    """Issue 17, item 7: the interval beside each key metric, as the ``<key>_ci`` tag bench logs
    ("[lo, hi]"), else the ``_ci_lo``/``_ci_hi`` metrics (runs logged without the tag), else ``_sem``."""
    from mlflow.entities import Metric

    uri, _, _ = store
    exp, run_id, started = log_with_intervals(uri)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.tags["fid_ci"] == "[2.718, 3.142]" and "swd_ci" not in run.data.tags  # NaN: no interval
    assert (run.data.tags["bench.sample_seed"], run.data.params["sample_seed"]) == ("1", "1")
    assert key_columns(client, exp) == ["tags.`bench.dataset`", "tags.`bench.family`", "tags.`bench.sampler`",
                                        "tags.`bench.seed`", "tags.`bench.sample_seed`",
                                        "metrics.`fid`", "tags.`fid_ci`", "metrics.`swd`", "metrics.`bpd`",
                                        "metrics.`bpd_sem`"]
    # a run logged with the interval metrics but without the tag (before bench wrote it)
    old = client.create_run(exp, tags={"bench.kind": "case", "bench.seed": "0"}, start_time=int(started * 1000))
    client.log_batch(old.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in
                                               {"kid": 0.1, "kid_ci_lo": 0.05, "kid_ci_hi": 0.2}.items()])
    columns = key_columns(client, exp)
    assert columns[columns.index("metrics.`kid`"):][:3] == ["metrics.`kid`", "metrics.`kid_ci_lo`", "metrics.`kid_ci_hi`"]


def test_unknown_experiment_and_missing_store_are_user_errors(store, workdir):
    uri, _, _ = store
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "-e", "nope"])
    assert result.exit_code == 2 and "unknown experiment 'nope'" in result.output
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", f"sqlite:///{workdir}/absent.db"])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    assert not (workdir / "absent.db").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid):
    """pid and every process below it, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def pgid_of(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="scans /proc for the process group")
def test_sigterm_stops_the_mlflow_server_and_all_its_workers(store, workdir):
    uri, _, new = store
    port = free_port()
    # bench ui in a session of its own, so that the groups checked below are bench's and the server's only
    ui = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                          cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        first = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/{new}/runs?viewStateShareKey={VIEW_KEY}" in first, first
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "the MLflow UI never answered"
                time.sleep(1)
        # an http tracking URI: no second server, the view's URL on that one
        remote = CliRunner().invoke(app, ["ui", "--tracking-uri", f"http://127.0.0.1:{port}", "-e", "older"])
        assert remote.exit_code == 0, remote.output
        assert f"http://127.0.0.1:{port}/#/experiments/" in remote.output and "viewStateShareKey" in remote.output

        procs = descendants(ui.pid)
        groups = {g for g in map(pgid_of, procs) if g is not None} - {ui.pid}
        assert len(procs) >= 2, procs  # bench and the server (plus its workers), in a group of its own
        ui.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and (any(group_members(g) for g in groups) or any(map(alive, procs[1:]))):
            time.sleep(0.2)
        survivors = {g: group_members(g) for g in groups}
        assert not any(survivors.values()), f"MLflow processes survived `bench ui` by 10 s: {survivors}"
        assert not [p for p in procs[1:] if alive(p)]  # nor any process that left its group
        assert ui.wait(60) == 0  # bench itself ends too (MLflow's telemetry flush may delay its exit)
        assert not group_members(ui.pid)
    finally:
        for g in {pgid_of(p) for p in descendants(ui.pid)} - {None, os.getpgid(0)}:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ui.wait(10)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_printed_view_shows_the_case_runs_with_key_metric_columns_in_chromium(store, workdir):
    uri, _, new = store
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", "--tracking-uri", uri, "--port", str(port),
                           "-e", "newer"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        url = ui.stdout.readline().strip().split(": ", 1)[1]
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "the MLflow UI never answered"
                time.sleep(1)
        text = page_text(url, workdir / "profile")
        assert "viewing a shared view" in text, text[:2000]  # the UI loaded bench's saved view
        for column in ("fid", "kid"):
            assert column in text, column
        # the per-case interval beside the metric (issue 17, item 7)
        exp, _, _ = log_with_intervals(uri)
        save_key_metrics_view(MlflowClient(tracking_uri=uri), exp)
        text = page_text(runs_view_url(url.split("/#/")[0], exp, VIEW_KEY), workdir / "profile2")
        assert "fid_ci" in text and "[2.718, 3.142]" in text and "bpd_sem" in text, text[:2000]
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(60)


def page_text(url, profile):
    """The text headless Chromium renders for ``url`` (the DOM without tags and styles)."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--window-size=3000,1600", f"--user-data-dir={profile}",
                          "--virtual-time-budget=45000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180).stdout
    dom = re.sub(r"<style[^>]*>.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def test_a_busy_port_is_a_user_error(store):
    uri, _, _ = store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot serve the MLflow UI on 127.0.0.1:{port}" in result.output and "--port" in result.output
