"""``bench ui``: the MLflow UI on bench's store, opened on an experiment's runs table with the suite's
key metrics as columns, and stopped cleanly.

MLflow 3 opens its root URL on the GenAI overview; the runs table of an experiment is the route
``#/experiments/<id>/runs``. That route reads the search facets (``searchFilter``, ``orderByKey``,
...) from the URL query, but the table's columns only from a *saved view*: an experiment tag
``mlflow.sharedViewState.<key>`` whose value is the JSON of the page state (``searchFilter``,
``orderByKey``, ..., and ``selectedColumns`` with the keys ``metrics.`fid```,
``tags.`bench.dataset``` ...), opened with ``?viewStateShareKey=<key>``. bench writes one such view,
``bench-key-metrics``, and prints its URL. Beside each metric the view shows its per-case 95%
interval: the run's ``<metric>_ci`` tag (``"[lo, hi]"``, bench.tracking.interval_tags), else the
``<metric>_ci_lo``/``_ci_hi`` metrics, else ``<metric>_sem``. (Layout read from the MLflow 3.17 UI bundle; a headless
Chromium check shows the view's columns, but MLflow did not apply its search filter.)

The server runs in its own session (process group) so that stopping ``bench ui`` (Ctrl-C, SIGTERM,
SIGHUP) stops it and all its workers: SIGTERM to the group, then SIGKILL after a grace period.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import quote

VIEW_KEY = "bench-key-metrics"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
LABEL_TAGS = ("dataset", "family", "sampler", "seed")  # the case labels bench tags every child run with
SAMPLE_SEED = "bench.sample_seed"  # a column only where some case samples with another seed than it trained with
EXTRA_METRICS = ("nfe", "train_time_s")  # bookkeeping worth a column next to the quality metrics
CASES_FILTER = "tags.`bench.kind` = 'case'"


def pick_experiment(client, name: str | None):
    """The experiment called ``name``, or (None) the one whose latest bench suite run started last;
    None when the store holds no bench run."""
    from .errors import UnknownComponentError

    experiments = client.search_experiments()
    if name is not None:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise UnknownComponentError("experiment", name, [e.name for e in experiments])
        return exp
    if not experiments:
        return None
    runs = client.search_runs([e.experiment_id for e in experiments], filter_string="tags.`bench.kind` = 'suite'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return client.get_experiment(runs[0].info.experiment_id) if runs else None


def key_columns(client, experiment_id: str, sample: int = 200) -> list[str]:
    """The runs-table columns of the view: the case labels, then the suite's metrics (the ``metrics``
    parameter of the latest case runs) and bench's headline metrics that were logged, each followed
    by its per-case interval (module docstring), then NFE and training time. Column keys are
    MLflow's ``<type>.`<key>``` form."""
    from .session import HEADLINE

    runs = client.search_runs([experiment_id], filter_string=CASES_FILTER, max_results=sample,
                              order_by=["attributes.start_time DESC"])
    logged = {k for r in runs for k in r.data.metrics}
    tags = {k for r in runs for k in r.data.tags}
    requested = [m for r in runs for m in (r.data.params.get("metrics") or "").split(",") if m]
    metrics = [m for m in HEADLINE if m in logged]
    metrics += [m for m in dict.fromkeys(requested) if m in logged and m not in metrics]
    metrics += [m for m in EXTRA_METRICS if m in logged and m not in metrics]
    labels = [f"bench.{k}" for k in LABEL_TAGS if f"bench.{k}" in tags]
    if any(r.data.tags.get(SAMPLE_SEED, r.data.tags.get("bench.seed")) != r.data.tags.get("bench.seed") for r in runs):
        labels.append(SAMPLE_SEED)
    columns = [f"tags.`{k}`" for k in labels]
    for m in metrics:
        columns.append(f"metrics.`{m}`")
        if f"{m}_ci" in tags:
            columns.append(f"tags.`{m}_ci`")
        elif f"{m}_ci_lo" in logged and f"{m}_ci_hi" in logged:
            columns += [f"metrics.`{m}_ci_lo`", f"metrics.`{m}_ci_hi`"]
        elif f"{m}_sem" in logged:
            columns.append(f"metrics.`{m}_sem`")
    return columns


def save_key_metrics_view(client, experiment_id: str) -> str:
    """Write (or refresh) the saved view on the experiment; return its share key. It lists the case
    runs only (MLflow 3.17 did not apply this search in a headless check) with :func:`key_columns`."""
    state = {"selectedColumns": key_columns(client, experiment_id), "searchFilter": CASES_FILTER,
             "orderByKey": "attributes.start_time", "orderByAsc": False}
    # the UI reads the tag's value as the page state itself (JSON, or base64 of its gzip) and picks the
    # search facets and UI-state keys it knows from its top level
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps(state))
    return VIEW_KEY


def runs_view_url(base: str, experiment_id: str | None, view_key: str | None) -> str:
    """``<base>/#/experiments/<id>/runs?viewStateShareKey=<key>`` (the experiment list without an id)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments"
    url = f"{base}/#/experiments/{quote(str(experiment_id))}/runs"
    return url + (f"?viewStateShareKey={quote(view_key)}" if view_key else "")


def server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow ui`` on ``uri`` with one web worker: a local, single-user UI needs no more (MLflow's
    default of 4 uvicorn workers costs seconds of start-up and memory on a small machine)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()]
    return cmd


def check_port_free(host: str, port: int) -> None:
    """A one-line user error when ``host:port`` cannot be listened on (MLflow would fail later, noisily)."""
    import socket

    from .errors import UserError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot serve the MLflow UI on {host}:{port}: {exc.strerror or exc}",
                        hint="pass another --port") from None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the server's whole process group, wait up to ``grace_s`` for every member to exit, then
    SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so it does not linger as a zombie
            if not group_members(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def serve(cmd: list[str], health_url: str, echo: Callable[[str], None], grace_s: float = 5.0) -> int:
    """Run the MLflow server in its own session until it exits or bench is interrupted (Ctrl-C,
    SIGTERM, SIGHUP); then stop the whole group. Returns the exit code for ``bench ui``."""
    handled = (signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, _interrupt) for sig in handled}
    proc = None
    try:
        # MLflow's background job runner (GenAI judges and scorers: a dozen huey processes) serves no
        # bench view; it stays off unless the user asks for it
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
               os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
        proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        ready = False
        while proc.poll() is None:
            if not ready:
                try:
                    with urllib.request.urlopen(health_url, timeout=2):
                        ready = True
                        echo("bench ui: MLflow is up (Ctrl-C to stop)")
                except OSError:
                    time.sleep(0.5)
            else:
                time.sleep(0.5)
        echo(f"bench ui: the MLflow server exited with code {proc.returncode}")
        return proc.returncode if proc.returncode >= 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop_group(proc, grace_s)
        for sig, handler in old.items():
            signal.signal(sig, handler)
