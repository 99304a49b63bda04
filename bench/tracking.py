"""MLflow logging (DESIGN.md section 6): one parent run per ``bench run``, one nested child run per
case, logged in batches from the case record. Only the driver process calls this module.

The default store is ``sqlite:///mlflow.db`` in the working directory, with artifacts in
``./mlartifacts``; any tracking URI works (``http://host:5000`` for a server). Credentials for a
server come from the environment (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) and
are never logged.

Credentials in the URI itself are redacted (:mod:`bench.redact`) wherever bench prints or logs it;
MLflow's own "View run ... at: URL" lines are switched off, and its log records pass through the
same redaction. An ``http(s)`` server is probed once, with a short timeout, before any run is
created (:func:`check_reachable`): an unreachable or failing server is a one-line user error in
seconds instead of minutes of silent retries.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, unquote, urlsplit

import yaml

from .errors import UserError
from .names import inside
from .redact import is_secret_key, redact_secrets, redact_text
from .redact import redact_uri as _redact_uri

DEFAULT_URI = "sqlite:///mlflow.db"
STATUS = {"ok": "FINISHED", "failed": "FAILED", "killed": "KILLED", "skipped": "FINISHED"}
#: MLflow's HTTP retries, bounded unless the user set them (its defaults retry for minutes)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 5.0
# text artifacts are uploaded redacted; anything else (images, checkpoints) as it is
_TEXT_SUFFIXES = {".txt", ".md", ".log", ".csv", ".json", ".yaml", ".yml"}
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
    return {k: redact_secrets(v) for k, v in out.items()
            if k and not any(is_secret_key(part) for part in k.split("."))}


def interval_tags(metrics: dict[str, float]) -> dict[str, str]:
    """``<key>_ci`` = ``"[lo, hi]"`` for every metric logged with its per-case interval
    (``<key>_ci_lo``, ``<key>_ci_hi``): one text column the MLflow UI shows beside the metric."""
    out = {}
    for name, lo in metrics.items():
        if name.endswith("_ci_lo"):
            key = name[: -len("_ci_lo")]
            hi = metrics.get(f"{key}_ci_hi")
            if hi is not None and lo == lo and hi == hi:
                out[mlflow_key(f"{key}_ci")] = f"[{float(lo):.4g}, {float(hi):.4g}]"
    return out


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: the argument, ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
    A relative SQLite path is made absolute (MLflow caches stores per URI string, so a relative one
    would silently follow the first working directory of the process)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def check_tracking_uri(uri: str | None, must_exist: bool = False) -> str:
    """Resolve ``uri`` (:func:`resolve_uri`) and refuse the mistakes a user can make with it, each as a
    one-line :class:`~bench.errors.UserError` (exit 2) with the URI redacted:

    * a ``file:`` URI or a plain path: MLflow 3 keeps its file store in maintenance mode, so bench
      asks for a SQLite store (``sqlite:///path/mlflow.db``) instead;
    * a SQLite database whose directory does not exist: bench does not create it (a typo in the path
      would otherwise silently start a second, empty store); the message names the directory;
    * a SQLite database that cannot be written (probed by opening it, or by creating a file next to
      it, so it also holds for root and read-only mounts);
    * with ``must_exist`` (``bench ui``), a SQLite database that does not exist yet.

    Other schemes (``postgresql://``, ``http://`` ...) pass unchanged; reaching them is the Tracker's
    job. Call this before constructing a :class:`Tracker`."""
    from .errors import UserError

    raw = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = raw.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", raw) else ""
    if scheme in ("", "file") and raw not in ("databricks", "databricks-uc"):
        raise UserError(f"tracking URI '{redact_uri(raw)}' is an MLflow file store, which MLflow 3 keeps in "
                        "maintenance mode; use a SQLite store instead, e.g. sqlite:///path/mlflow.db")
    uri = resolve_uri(raw)
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return uri
    db = Path(uri[len("sqlite:///"):])
    if not db.parent.is_dir():
        raise UserError(f"tracking URI {redact_uri(uri)}: the directory {db.parent} does not exist",
                        hint=f"create it first (mkdir -p {db.parent}) or fix the path")
    if db.is_dir():
        raise UserError(f"tracking URI {redact_uri(uri)}: {db} is a directory, not a SQLite database file")
    if not db.exists() and must_exist:
        raise UserError(f"tracking URI {redact_uri(uri)}: no MLflow store at {db}",
                        hint="`bench run` creates it; or pass --tracking-uri")
    try:
        if db.exists():
            with open(db, "r+b"):
                pass
        else:
            import tempfile

            with tempfile.NamedTemporaryFile(dir=db.parent, prefix=f".{db.name}.probe-"):
                pass
    except OSError as exc:
        raise UserError(f"tracking URI {redact_uri(uri)}: cannot write the SQLite store "
                        f"{db if db.exists() else db.parent}: {exc.strerror or exc}") from None
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
    """See :func:`bench.redact.redact_uri`."""
    return _redact_uri(uri)


class _RedactFilter(logging.Filter):
    """Rewrites a log record's message with every known secret removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactFilter()


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3", "requests"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # bench makes no network call at run time; MLflow's telemetry also delays every exit by ~5 s offline
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow prints "View run NAME at: URL" (URL with the credentials) to stdout for HTTP stores
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _probe_request(uri: str) -> urllib.request.Request:
    """A GET of the experiments endpoint of an MLflow server, with Basic/Bearer auth taken from the
    URI's user info or MLflow's environment variables."""
    scheme, _, rest = uri.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    parts = urlsplit(f"{scheme}://{hostpart}")  # a query (?token=...) is not part of the endpoint
    base = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                     f"{quote('bench-probe')}", headers={"Accept": "application/json"})
    user, _, password = userinfo.partition(":")
    user = unquote(user) or os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = unquote(password) or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if user or password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return request


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a :class:`UserError` (redacted, one line) unless the ``http(s)`` tracking server at
    ``uri`` answers within ``timeout`` seconds without a server error. Other URIs pass."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    shown = redact_uri(uri)
    try:
        request = _probe_request(uri)
        urlsplit(request.full_url).port  # noqa: B018 - a bad port raises ValueError here
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise UserError(f"tracking server {shown} refused the credentials (HTTP {exc.code})",
                            hint="set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD") from None
        if exc.code >= 500:
            raise UserError(f"tracking server {shown} is failing (HTTP {exc.code} {redact_text(str(exc.reason))})")
        return  # 404 and the like: a server is there; MLflow reports its own errors
    except ValueError as exc:
        raise UserError(f"tracking URI {shown} is not a valid URL ({redact_text(str(exc))})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach tracking server {shown}: {redact_text(str(reason))} "
                        f"(checked with a {timeout:g} s timeout)") from None


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


class TrackingError(RuntimeError):
    """Logging to MLflow failed; the message holds no credentials."""


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
        redact_uri(self.uri)  # remember its credentials: every message below is scrubbed of them
        check_reachable(self.uri)
        try:
            with _sqlite_init_lock(self.uri):  # the first use creates / migrates the database schema
                self.client = MlflowClient(tracking_uri=self.uri)
                self._open_experiment(experiment)
        except Exception as exc:  # noqa: BLE001
            if not self.uri.lower().startswith(("http://", "https://")):
                raise
            # the server answered the probe but fails now: the user's to fix, in one redacted line
            detail = redact_text(str(exc)).strip().splitlines()
            raise UserError(f"tracking server {redact_uri(self.uri)} failed: {type(exc).__name__}"
                            + (f": {detail[0][:300]}" if detail else "")) from None
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
                                     tags={"bench.kind": "suite", **{k: redact_text(str(v)) for k, v in tags.items()}})
        self.parent_id = run.info.run_id
        self._log(self.parent_id, params=flatten(params))
        return self.parent_id

    def end_parent(self, status: str, metrics: dict[str, float], artifacts_dir: Path | None) -> None:
        if self.parent_id is None:
            return
        self._log(self.parent_id, metrics=metrics)
        if artifacts_dir is not None and artifacts_dir.exists():
            self._upload(self.parent_id, artifacts_dir, recursive=False)
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
        """Create the child run for a finished case and log everything in it. A failure is raised
        as :class:`TrackingError` with its message redacted (MLflow's name the full URI)."""
        try:
            return self._log_case(record, tags)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(redact_text(f"{type(exc).__name__}: {exc}")) from None

    def _log_case(self, record: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run_tags = {"bench.case_id": record["case_id"], "bench.case_hash": record["case_hash"],
                    "bench.train_key": record.get("train_key", "")[:16],
                    "bench.status": record["status"], "bench.kind": "case",
                    "bench.trained": str(record.get("trained", False)).lower(), **(tags or {})}
        if record.get("threads"):  # torch threads the case ran with (they change float reductions)
            run_tags["bench.threads"] = str(record["threads"])
        if record.get("device"):  # where the case ran (provenance, not hashed; bench.device)
            run_tags["bench.device"] = str(record["device"])
        for k, v in (record.get("labels") or {}).items():
            run_tags[mlflow_key(f"bench.{k}")] = str(v)
        if record.get("sample_seed") is not None:  # the seed of every draw after training (a case axis)
            run_tags["bench.sample_seed"] = str(record["sample_seed"])
        for k, v in (record.get("versions") or {}).items():
            run_tags[mlflow_key(f"bench.version.{k}")] = str(v)
        if record.get("train_resumed"):  # the saved training state it started from (bench.train_state)
            run_tags["bench.train_resumed_from"] = "step {step} of {train_key:.16}".format(**record["train_resumed"])
        if record.get("error"):
            run_tags["bench.error"] = record["error"][:5000]
        for name, reason in (record.get("skipped_metrics") or {}).items():
            run_tags[mlflow_key(f"bench.skipped.{name}")] = reason[:250]
        run_tags.update(interval_tags(record.get("metrics") or {}))
        run_tags = {k: redact_text(v) for k, v in run_tags.items()}
        if self.parent_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = self.parent_id
        start_ms = int(record.get("started", time.time()) * 1000)
        run = self.client.create_run(self.experiment_id, run_name=record["case_id"], tags=run_tags,
                                     start_time=start_ms)
        run_id = run.info.run_id
        params = flatten(record.get("config") or {})
        if record.get("precision"):
            params["precision"] = record["precision"]
        if record.get("sample_seed") is not None:
            params["sample_seed"] = record["sample_seed"]
        metrics = {k: v for k, v in (record.get("metrics") or {}).items() if v == v}  # drop NaN
        self._log(run_id, params=params, metrics=metrics, series=record.get("series") or {},
                  timestamp=int(record.get("finished", time.time()) * 1000))
        case_dir = record.get("case_dir")
        if case_dir and Path(case_dir).is_dir():
            self._upload(run_id, Path(case_dir), recursive=True)
        self.client.set_terminated(run_id, status=STATUS.get(record["status"], "FAILED"),
                                   end_time=int(record.get("finished", time.time()) * 1000))
        return run_id

    def _upload(self, run_id: str, directory: Path, recursive: bool) -> None:
        """Upload the files under ``directory``: text files redacted (:func:`redacted_copy`), and
        only files that really lie inside it (a symlink pointing elsewhere is skipped)."""
        files = sorted(p for p in (directory.rglob("*") if recursive else directory.iterdir()) if p.is_file())
        with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
            for path in files:
                if not inside(path, directory):
                    continue
                rel = path.relative_to(directory)
                source = redacted_copy(path, Path(tmp) / rel) if path.suffix.lower() in _TEXT_SUFFIXES else path
                self.client.log_artifact(run_id, str(source), str(rel.parent) if rel.parent != Path(".") else None)

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


def redacted_copy(src: Path, dst: Path) -> Path:
    """Write ``src`` to ``dst`` with its secrets removed: JSON and YAML through
    :func:`bench.redact.redact_secrets` (values under secret-looking keys, credentials in URIs),
    any text through :func:`bench.redact.redact_text`. Returns ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = src.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        shutil.copyfile(src, dst)
        return dst
    suffix = src.suffix.lower()
    try:
        if suffix == ".json":
            text = json.dumps(redact_secrets(json.loads(text)), indent=1)
        elif suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(redact_secrets(yaml.safe_load(text)), sort_keys=False, default_flow_style=False)
    except (ValueError, yaml.YAMLError):
        pass  # not parseable: redacted as plain text below
    dst.write_text(redact_text(text), encoding="utf-8")
    return dst
