"""A suite logged over HTTP to a real `mlflow server` on loopback: SQLite backend, and PostgreSQL
when one is available (`.ci/run` installs and starts it and sets BENCH_TEST_POSTGRES_URI)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

SUITE = """\
name: served
defaults: {train: {steps: 20, lr: 0.05}, eval: {num_samples: 32}}
matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss, {name: gauss, steps: 5}]}
metrics: [mean_err]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(backend: str, artifacts: Path, log: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
           "--port", str(port), "--serve-artifacts", "--artifacts-destination", str(artifacts), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("mlflow server did not start in 180 s")


def run_against(url: str, workdir: Path):
    (workdir / "s.yaml").write_text(SUITE)
    result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", url, "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`bench.kind` = 'case'")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["bench.status"] == "ok" and run.data.metrics["mean_err"] > 0
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"case.yaml", "samples.png", "record.json"} <= arts
    # resume works against the server too
    again = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", url, "--plugins", "bench_testplug"])
    assert "2 already finished" in again.output
    # and compare reads from it
    table = CliRunner().invoke(app, ["compare", "-e", "served", "--tracking-uri", url, "--metric", "mean_err",
                                     "--format", "csv"])
    assert table.exit_code == 0 and table.output.startswith("family,sampler,metric,mean,lo,hi,n")


def test_suite_over_http_with_sqlite_backend(workdir):
    proc, url = start_server(f"sqlite:///{workdir / 'server.db'}", workdir / "server-artifacts", workdir / "server.log")
    try:
        run_against(url, workdir)
        assert any((workdir / "server-artifacts").rglob("samples.png"))  # proxied, not written locally
    finally:
        proc.terminate()
        proc.wait(30)


def test_suite_over_http_with_postgresql_backend(workdir):
    uri = os.environ.get("BENCH_TEST_POSTGRES_URI")
    if not uri:
        pytest.skip("no PostgreSQL: set BENCH_TEST_POSTGRES_URI (.ci/run installs Debian postgresql and sets it)")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a PostgreSQL backend")
    proc, url = start_server(uri, workdir / "pg-artifacts", workdir / "server.log")
    try:
        run_against(url, workdir)
    finally:
        proc.terminate()
        proc.wait(30)


def test_credentials_never_reach_params_or_tags(workdir):
    """A tracking URI with a password is redacted in everything bench prints or logs."""
    from bench.tracking import flatten, redact_uri

    assert redact_uri("postgresql://bench:s3cret@localhost/db") == "postgresql://***@localhost/db"
    flat = flatten({"dataset": {"name": "x", "api_token": "abc"}, "db_password": "p"})
    assert flat == {"dataset.name": "x"}
