"""MLflow logging (DESIGN.md section 6): one parent run per ``bench run``, one nested child run per
case, logged in batches from the case record. Only the driver process calls this module.

The default store is ``sqlite:///mlflow.db`` in the working directory, with artifacts in
``./mlartifacts``; any tracking URI works (``http://host:5000`` for a server). Credentials for a
server come from the environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) and
are never logged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterable

DEFAULT_URI = "sqlite:///mlflow.db"
STATUS = {"ok": "FINISHED", "failed": "FAILED", "killed": "KILLED", "skipped": "FINISHED"}
_SECRET = re.compile(r"(password|secret|token|credential|api_key)", re.I)
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def mlflow_key(key: str) -> str:
    """A param/metric/tag key MLflow accepts: characters outside ``[A-Za-z0-9_-. :/]`` become ``_``
    (a plugin may report e.g. ``fid@T=0.9``), at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:250] or "_"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"family": {"noise": {"name": "gff"}}}`` -> ``{"family.noise.name": "gff"}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) and "name" in v for v in obj):
        out[prefix[:-1]] = ",".join(str(v.get("id") or v["name"]) for v in obj)
        for v in obj:
            key = str(v.get("id") or v["name"])
            out.update(flatten({k: x for k, x in v.items() if k not in ("name", "id")}, f"{prefix}{key}."))
    elif obj is None:
        out[prefix[:-1]] = "None"
    else:
        out[prefix[:-1]] = obj
    return {k: v for k, v in out.items() if k and not _SECRET.search(k)}


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the argument, ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
    A relative SQLite path is made absolute (MLflow caches stores per URI string, so a relative one
    would silently follow the first working directory of the process)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def search_runs_frame(uri: str | None, experiment_names: list[str], **kwargs):
    """``mlflow.search_runs`` (a pandas DataFrame) against ``uri``, without leaving the process-wide
    tracking URI (and ``$MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` sets) changed."""
    _quiet_mlflow()
    import mlflow

    uri = resolve_uri(uri)
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    old_uri = mlflow.get_tracking_uri() if old_env is not None else None
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=experiment_names, **kwargs)
    finally:
        if old_env is None:
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(old_uri)


def redact_uri(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def _sqlite_init_lock(uri: str):
    """Serialise the first use of a SQLite store across processes: two ``bench run`` started at once
    on a new ``mlflow.db`` would otherwise both run MLflow's schema migrations and one would fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), "" if unknown or gone;
    together with the pid it names one process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def driver_tags() -> dict[str, str]:
    """Tags that identify the ``bench run`` process owning a parent run (for ``close_stale_parents``)."""
    return {"bench.pid": str(os.getpid()), "bench.pid_start": _process_start(os.getpid())}


def driver_alive(tags: dict[str, str]) -> bool:
    """Whether the ``bench run`` that wrote ``tags`` may still run: True unless it ran on this host and
    its process is gone (or its pid now names another process). Runs of other hosts count as alive."""
    if tags.get("bench.host") != socket.gethostname() or not tags.get("bench.pid", "").isdigit():
        return True
    pid = int(tags["bench.pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _process_start(pid)
    if start and tags.get("bench.pid_start") and start != tags["bench.pid_start"]:
        return False
    try:  # a zombie (killed, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Tracker:
    """A thin layer over ``mlflow.MlflowClient``."""

    def __init__(self, uri: str | None, experiment: str):
        _quiet_mlflow()
        from mlflow import MlflowClient

        _quiet_mlflow()

        self.uri = resolve_uri(uri)
        with _sqlite_init_lock(self.uri):  # the first use creates / migrates the database schema
            self.client = MlflowClient(tracking_uri=self.uri)
            self._open_experiment(experiment)
        self.experiment = experiment
        self.parent_id: str | None = None

    def _open_experiment(self, experiment: str) -> None:
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///"):]).resolve()
                location = (db.parent / "mlartifacts").as_uri()
            # the kind tag makes the MLflow 3 UI open the experiment on its Runs table (not the GenAI view)
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location,
                tags={"mlflow.experimentKind": "custom_model_development", "bench.suite": experiment})
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id

    # ------------------------------------------------------------------ parent
    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"bench.kind": "suite", **tags})
        self.parent_id = run.info.run_id
        self._log(self.parent_id, params=flatten(params))
        return self.parent_id

    def end_parent(self, status: str, metrics: dict[str, float], artifacts_dir: Path | None) -> None:
        if self.parent_id is None:
            return
        self._log(self.parent_id, metrics=metrics)
        if artifacts_dir is not None and artifacts_dir.exists():
            for path in sorted(artifacts_dir.iterdir()):
                if path.is_file():
                    self.client.log_artifact(self.parent_id, str(path))
        self.client.set_terminated(self.parent_id, status=status)

    def close_stale_parents(self) -> list[str]:
        """Mark KILLED the RUNNING parent runs of this experiment whose ``bench run`` is gone
        (``driver_alive``: same host, dead pid); returns their run ids."""
        closed = []
        runs = self.client.search_runs([self.experiment_id], max_results=1000,
                                       filter_string="tags.`bench.kind` = 'suite' and attributes.status = 'RUNNING'")
        for run in runs:
            if run.info.run_id != self.parent_id and not driver_alive(run.data.tags):
                self.client.set_tag(run.info.run_id, "bench.closed_by", f"{socket.gethostname()}:{os.getpid()}")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
        return closed

    # ------------------------------------------------------------------ cases
    def log_case(self, record: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        """Create the child run for a finished case and log everything in it."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run_tags = {"bench.case_id": record["case_id"], "bench.case_hash": record["case_hash"],
                    "bench.train_key": record.get("train_key", "")[:16],
                    "bench.status": record["status"], "bench.kind": "case",
                    "bench.trained": str(record.get("trained", False)).lower(), **(tags or {})}
        if record.get("threads"):  # torch threads the case ran with (they change float reductions)
            run_tags["bench.threads"] = str(record["threads"])
        for k, v in (record.get("labels") or {}).items():
            run_tags[mlflow_key(f"bench.{k}")] = str(v)
        for k, v in (record.get("versions") or {}).items():
            run_tags[mlflow_key(f"bench.version.{k}")] = str(v)
        if record.get("error"):
            run_tags["bench.error"] = record["error"][:5000]
        for name, reason in (record.get("skipped_metrics") or {}).items():
            run_tags[mlflow_key(f"bench.skipped.{name}")] = reason[:250]
        if self.parent_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_id
        start_ms = int(record.get("started", time.time()) * 1000)
        run = self.client.create_run(self.experiment_id, run_name=record["case_id"], tags=run_tags,
                                     start_time=start_ms)
        run_id = run.info.run_id
        params = flatten(record.get("config") or {})
        metrics = {k: v for k, v in (record.get("metrics") or {}).items() if v == v}  # drop NaN
        self._log(run_id, params=params, metrics=metrics, series=record.get("series") or {},
                  timestamp=int(record.get("finished", time.time()) * 1000))
        case_dir = record.get("case_dir")
        if case_dir and Path(case_dir).exists():
            self.client.log_artifacts(run_id, case_dir)
        self.client.set_terminated(run_id, status=STATUS.get(record["status"], "FAILED"),
                                   end_time=int(record.get("finished", time.time()) * 1000))
        return run_id

    def _log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
             series: dict[str, Iterable] | None = None, timestamp: int | None = None) -> None:
        from mlflow.entities import Metric, Param

        ts = timestamp or int(time.time() * 1000)
        param_list = list({mlflow_key(k): Param(mlflow_key(k), str(v)[:6000])
                           for k, v in (params or {}).items()}.values())
        metric_list = [Metric(mlflow_key(k), float(v), ts, 0) for k, v in (metrics or {}).items()]
        for key, points in (series or {}).items():
            metric_list.extend(Metric(mlflow_key(key), float(v), ts, int(step)) for step, v in points if v == v)
        for i in range(0, len(param_list), 100):
            self.client.log_batch(run_id, params=param_list[i:i + 100])
        for i in range(0, len(metric_list), 1000):
            self.client.log_batch(run_id, metrics=metric_list[i:i + 1000])

    # ------------------------------------------------------------------ queries
    def finished_cases(self) -> dict[str, Any]:
        """case_hash -> the latest ok child run in this experiment (for resume)."""
        out: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string="tags.`bench.status` = 'ok' and tags.`bench.kind` = 'case'",
                                           max_results=1000, page_token=token,
                                           order_by=["attributes.start_time ASC"])
            for run in page:
                out[run.data.tags.get("bench.case_hash", "")] = run
            token = page.token
            if not token:
                return out
