"""Input, paths and credentials (docs/reliability.md): credentials never leak, hostile YAML is cheap
to reject, names are path-safe, `bench log` uploads only its own directory. Each test reproduces a
failure of issue 11 (items 1, 2, 6, 7, 8)."""
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import SuiteError
from bench.redact import SECRET_KEY, redact_secrets, redact_text, redact_uri
from bench.yamlload import load_yaml_text

SUITE = """\
name: sec
defaults: {train: {steps: 5, lr: 0.05}, eval: {num_samples: 16, grid: 0}}
matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}
metrics: [mean_err]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> Path:
    """One MLflow database for the module: creating one costs seconds (schema migrations)."""
    return tmp_path_factory.mktemp("mlflow") / "m.db"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_db) -> Path:
    """A results directory of one finished case (copied by the tests that tamper with it)."""
    root = tmp_path_factory.mktemp("run")
    (root / "s.yaml").write_text(SUITE)
    old = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", f"sqlite:///{shared_db}",
                                          "--plugins", "bench_testplug"])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return next(root.glob("results/sec/*"))


def one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# ----------------------------------------------------------------------------- URIs


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://bench:s3cret@localhost/db", "postgresql://***@localhost/db"),
    ("http://user:p@ss@127.0.0.1:5000", "http://***@127.0.0.1:5000"),           # '@' in the password
    ("http://user:pa/ss@127.0.0.1:5000/x", "http://***@127.0.0.1:5000/x"),      # '/' in the password
    ("http://user:p@s/s?x@host:1", "http://***@host:1"),
    ("https://host/api?token=abc123&page=2", "https://host/api?token=***&page=2"),
    ("https://h/p?X-Amz-Signature=zz&X-Amz-Credential=yy&sig=q&x=1",
     "https://h/p?X-Amz-Signature=***&X-Amz-Credential=***&sig=***&x=1"),
    ("sqlite:////home/me/mlflow.db", "sqlite:////home/me/mlflow.db"),            # unchanged
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_redact_uri_hides_user_info_and_secret_query_values(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_text_finds_uris_and_remembered_secrets():
    text = "API request to http://u:p@ss/w0rd@10.0.0.1:5000/api/2.0 failed; password p@ss/w0rd"
    redact_uri("http://u:p@ss/w0rd@10.0.0.1:5000")
    out = redact_text(text)
    assert "p@ss/w0rd" not in out and "http://***@10.0.0.1:5000/api/2.0" in out


@pytest.mark.parametrize("key", ["api_key", "apiKey", "apikey", "auth_token", "passwd", "password",
                                 "db_password", "secret", "private_key", "access_key", "token",
                                 "credential", "AWS_SECRET_ACCESS_KEY"])
def test_secret_key_pattern_covers_the_documented_names(key):
    assert SECRET_KEY.search(key)
    assert redact_secrets({"x": {key: "v4lue-42"}}) == {"x": {key: "***"}}


@pytest.mark.parametrize("key", ["lr", "steps", "noise", "schedule", "num_samples", "hidden", "solver"])
def test_ordinary_keys_are_not_secret(key):
    assert not SECRET_KEY.search(key)


def test_mlflow_run_url_lines_are_switched_off(shared_db, monkeypatch, capsys):
    """MLflow 3 writes 'View run NAME at: URL' (the URL with the credentials) to stdout for an HTTP
    store; bench switches that off once it talks to MLflow."""
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from bench.tracking import Tracker

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    Tracker(f"sqlite:///{shared_db}", "quiet")

    class Run:
        class info:
            experiment_id, run_name = "1", "r"

        class data:
            tags = {}

    monkeypatch.setattr(RestStore, "get_run", lambda self, run_id: Run)
    client = TrackingServiceClient("http://user:Sup3rSecret@127.0.0.1:1")
    client._log_url("abc")
    assert "Sup3rSecret" not in capsys.readouterr().out


def test_unreachable_server_fails_fast_with_one_redacted_line(workdir):
    (workdir / "s.yaml").write_text(SUITE)
    uri = f"http://bench:s3cr@t/pw@127.0.0.1:{free_port()}"  # nobody listens there
    start = time.monotonic()
    result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", uri, "--plugins", "bench_testplug"])
    assert time.monotonic() - start < 20
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "cannot reach tracking server http://***@127.0.0.1" in line and "s3cr" not in line


def test_a_logging_failure_is_reported_without_the_credentials(shared_db, monkeypatch):
    """MLflow's errors name the full request URL; the warning bench prints and keeps in the record
    (session: "MLflow logging failed (...)") must not carry the password."""
    from bench.tracking import Tracker, TrackingError

    tracker = Tracker(f"sqlite:///{shared_db}", "failing-log")

    def boom(*args, **kwargs):
        raise RuntimeError("API request to http://bench:Secr3tPassw0rd@10.1.2.3:5000/api/2.0/mlflow/runs/create failed")

    monkeypatch.setattr(tracker.client, "create_run", boom)
    record = {"case_id": "s/d/f/g/seed=0", "case_hash": "h", "status": "ok"}
    with pytest.raises(TrackingError) as info:
        tracker.log_case(record)
    assert "Secr3tPassw0rd" not in str(info.value) and "http://***@10.1.2.3:5000" in str(info.value)


class _Failing(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"boom")

    do_GET = do_POST = _fail

    def log_message(self, *args):  # keep the test output clean
        pass


def test_a_failing_server_fails_fast_with_one_redacted_line(workdir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (workdir / "s.yaml").write_text(SUITE)
        uri = f"http://bench:Pa55w0rd@127.0.0.1:{server.server_address[1]}?token=T0kenValue"
        start = time.monotonic()
        result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", uri, "--plugins", "bench_testplug"])
        assert time.monotonic() - start < 20
    finally:
        server.shutdown()
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "HTTP 500" in line and "Pa55w0rd" not in line and "T0kenValue" not in line


# ----------------------------------------------------------------------------- secrets in a run

SECRET_PLUGIN = '''
from bench.hookspecs import hookimpl


class Keyed:
    def __init__(self, api_key: str = "", auth_token: str = "", apikey: str = "", passwd: str = "",
                 private_key: str = "", access_key: str = ""):
        pass

    def compute(self, ctx):
        return {"keyed": 1.0}


@hookimpl
def bench_register_metrics(register):
    register("keyed", Keyed, modalities=["points"])
'''
SECRETS = {"api_key": "Ak-11111111", "auth_token": "At-22222222", "apikey": "Ak-33333333",
           "passwd": "Pw-44444444", "private_key": "Pk-55555555", "access_key": "Ac-66666666"}


def _everything_mlflow_holds(db: Path) -> str:
    with sqlite3.connect(db) as con:
        rows = [str(r) for table in ("params", "tags", "metrics", "runs", "latest_metrics")
                for r in con.execute(f"select * from {table}")]
    return "\n".join(rows)


def test_no_credential_reaches_output_params_tags_metrics_or_artifacts(workdir, monkeypatch, shared_db):
    """A password in the suite's tracking URI and secret-looking metric parameters: none of their
    values appears in the output, MLflow (params, tags, metric names, run names), its artifacts,
    or any file of the results directory (suite.yaml, cases.json, records.json, each case's files)."""
    (workdir / "bench_secretplug.py").write_text(SECRET_PLUGIN)
    monkeypatch.syspath_prepend(str(workdir))
    params = ", ".join(f"{k}: {v}" for k, v in SECRETS.items())
    suite = SUITE.replace("metrics: [mean_err]", f"metrics: [mean_err, {{name: keyed, {params}}}]")
    suite += "tracking: {uri: 'http://bench:Tr4ckPass/w@rd@mlflow.example:5000?token=Q-77777777'}\n"
    (workdir / "s.yaml").write_text(suite)
    result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", f"sqlite:///{shared_db}",
                                      "--plugins", "bench_testplug", "--plugins", "bench_secretplug"])
    assert result.exit_code == 0, result.output
    secrets = [*SECRETS.values(), "Tr4ckPass", "Q-77777777"]
    held = _everything_mlflow_holds(shared_db)
    assert "keyed[access_key=***" in held  # the metric is there, its label redacted
    artifacts = shared_db.parent / "mlartifacts"
    uploaded = "\n".join(p.read_text(errors="replace") for p in artifacts.rglob("*") if p.is_file())
    assert "keyed[access_key=***" in uploaded  # record.json, case.yaml, cases.json were uploaded
    stored_suite = next(workdir.glob("results/sec/*/suite.yaml")).read_text()
    assert "mlflow.example" in stored_suite
    local = "\n".join(p.read_text(errors="replace") for p in (workdir / "results").rglob("*") if p.is_file())
    assert "keyed[access_key=***" in local  # records, case.yaml, cases.json, records.json are written
    for secret in secrets:
        assert secret not in result.output
        assert secret not in held
        assert secret not in uploaded
        assert secret not in stored_suite
        assert secret not in local  # no file of the results directory holds it either


# ----------------------------------------------------------------------------- YAML

BOMB = "\n".join(["a: &a [" + ",".join(['"lol"'] * 9) + "]"] +
                 [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


def test_alias_bomb_is_rejected_in_under_a_second_and_200_mb():
    assert len(BOMB.encode()) < 420
    tracemalloc.start()
    start = time.monotonic()
    with pytest.raises(SuiteError, match="more than 100,000 YAML nodes"):
        load_yaml_text(BOMB, "bomb.yaml")
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 200e6


def test_alias_bomb_through_the_cli_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bench.cli", "validate", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - start < 10  # Python start-up included, on a busy machine
    assert result.stderr.strip().count("\n") == 0 and f"{path}:" in result.stderr


def test_node_and_size_limits_are_settable(tmp_path, monkeypatch):
    small = "name: x\nlist: [1, 2, 3, 4, 5]\n"
    monkeypatch.setenv("BENCH_YAML_MAX_NODES", "5")
    with pytest.raises(SuiteError, match="more than 5 YAML nodes"):
        load_yaml_text(small, "s.yaml")
    monkeypatch.setenv("BENCH_YAML_MAX_NODES", "100")
    load_yaml_text(small, "s.yaml")
    monkeypatch.setenv("BENCH_YAML_MAX_BYTES", "10")
    path = tmp_path / "s.yaml"
    path.write_text(small)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "larger than 10 bytes" in one_line(result)
    monkeypatch.setenv("BENCH_YAML_MAX_BYTES", "ten")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "BENCH_YAML_MAX_BYTES must be a positive integer" in one_line(result)


def test_a_large_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 200_000)  # 2 MB of comments
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "larger than 1,048,576 bytes" in one_line(result)


def test_recursive_alias_is_an_error_not_a_hang():
    with pytest.raises(SuiteError):
        load_yaml_text("a: &a [*a]\n", "s.yaml")


@pytest.mark.parametrize("text, where, what", [
    ("name: x\n? [a, b]\n: c\n", "s.yaml:2:3", "complex mapping keys"),
    ("name: x\nmatrix: {dataset: [{name: toy2d/moons, w: {1: a, b: c}}], family: [fitgauss]}\n",
     "s.yaml:2:44", "mapping keys must be strings"),
    ("name: x\n1: y\n", "s.yaml:2:1", "mapping keys must be strings"),
])
def test_complex_and_non_string_keys_are_user_errors(workdir, text, where, what):
    (workdir / "s.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "s.yaml", "--plugins", "bench_testplug"])
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert line.startswith(f"{where}: error:") and what in line


# ----------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name, what", [("x" * 5000, "5,000 characters long"), ("..", "'..' is not allowed"),
                                         (".", "'.' is not allowed")])
def test_bad_suite_names_fail_before_anything_is_written(workdir, name, what):
    (workdir / "inner").mkdir()
    (workdir / "inner" / "s.yaml").write_text(SUITE.replace("name: sec", f"name: '{name}'") + "results: .\n")
    os.chdir(workdir / "inner")
    before = sorted(p.name for p in workdir.iterdir())
    result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 2, result.output
    assert what in one_line(result) and "s.yaml:1:7: error: suite name" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert sorted(p.name for p in (workdir / "inner").iterdir()) == ["s.yaml"]


@pytest.mark.parametrize("ident", ["../up", "a/b", "..", "x" * 101])
def test_bad_entry_ids_are_user_errors(workdir, ident):
    (workdir / "s.yaml").write_text(SUITE.replace("sampler: [gauss]", f"sampler: [{{name: gauss, id: '{ident}'}}]"))
    result = CliRunner().invoke(app, ["validate", "s.yaml", "--plugins", "bench_testplug"])
    assert result.exit_code == 2, result.output
    assert "s.yaml:3:" in one_line(result) and "sampler id" in result.output


def _copy_of(run: Path, workdir: Path) -> Path:
    import shutil

    copy = workdir / "results" / "sec" / run.name
    shutil.copytree(run, copy, symlinks=True)
    for path in copy.glob("cases/*/record.json"):  # as if the run had happened here
        record = json.loads(path.read_text())
        record["case_dir"] = str(path.parent)
        path.write_text(json.dumps(record))
    return copy


@pytest.mark.parametrize("attack", ["case_dir", "artifact", "symlink", "dotdot"])
def test_bench_log_refuses_records_pointing_outside(workdir, finished_run, attack):
    run_dir = _copy_of(finished_run, workdir)
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("PRIVATE-DATA")
    record_path = next(run_dir.glob("cases/*/record.json"))
    record = json.loads(record_path.read_text())
    if attack == "case_dir":
        record["case_dir"] = str(outside)
    elif attack == "dotdot":
        record["case_dir"] = str(record_path.parent / ".." / ".." / ".." / ".." / ".." / "outside")
    elif attack == "artifact":
        record["artifacts"].append("../../../../../outside/private.txt")
    else:
        (record_path.parent / "private.txt").symlink_to(outside / "private.txt")
    record_path.write_text(json.dumps(record))
    result = CliRunner().invoke(app, ["log", str(run_dir), "--tracking-uri", f"sqlite:///{workdir / 'again.db'}"])
    assert result.exit_code == 2, result.output
    assert "refused" in one_line(result)
    assert not (workdir / "again.db").exists()  # refused before MLflow is touched


def test_bench_log_uploads_the_records_own_directory_after_a_copy(workdir, finished_run, shared_db):
    moved = workdir / "moved"
    moved.mkdir()
    import shutil

    shutil.copytree(finished_run, moved / "run")  # case_dir in its records still names the original
    result = CliRunner().invoke(app, ["log", str(moved / "run"), "--tracking-uri", f"sqlite:///{shared_db}",
                                      "--experiment", "moved"])
    assert result.exit_code == 0, result.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{shared_db}")
    exp = client.get_experiment_by_name("moved")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`bench.kind` = 'case'")
    assert {"case.yaml", "record.json"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}
