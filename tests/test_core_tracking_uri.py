"""Tracking-URI mistakes are user errors: one line, exit 2, the URI redacted, and no results directory
left behind by the failed run (issue 13, item 7)."""
import os

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import UserError
from bench.tracking import check_tracking_uri

SUITE = """\
name: urichk
defaults: {train: {steps: 5, lr: 0.05}, eval: {num_samples: 16}}
matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}
"""


def run_with_uri(workdir, uri):
    (workdir / "s.yaml").write_text(SUITE)
    return CliRunner().invoke(app, ["run", "s.yaml", "-q", "--tracking-uri", uri, "--plugins", "bench_testplug"])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_results_left(workdir):
    return not (workdir / "results").exists()


@pytest.mark.parametrize("uri", ["file:./mlruns", "file:///tmp/mlruns", "mlruns", "./store/mlruns"])
def test_file_store_and_plain_path_are_refused_with_the_sqlite_alternative(workdir, uri):
    line = assert_user_error(run_with_uri(workdir, uri), "maintenance mode", "sqlite:///")
    assert uri in line
    assert no_results_left(workdir) and not (workdir / "mlruns").exists()


def test_file_store_from_the_environment_is_refused_too(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:./mlruns")
    (workdir / "s.yaml").write_text(SUITE)
    result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug"])
    assert_user_error(result, "maintenance mode")
    assert no_results_left(workdir)


def test_sqlite_under_a_missing_directory_is_refused_not_created(workdir):
    missing = workdir / "no" / "such"
    line = assert_user_error(run_with_uri(workdir, f"sqlite:///{missing}/mlflow.db"), str(missing), "does not exist")
    assert "mkdir -p" in line
    assert not (workdir / "no").exists() and no_results_left(workdir)


def test_sqlite_relative_path_under_a_missing_directory_is_refused(workdir):
    assert_user_error(run_with_uri(workdir, "sqlite:///nodir/mlflow.db"), str(workdir / "nodir"))
    assert not (workdir / "nodir").exists() and no_results_left(workdir)


def test_sqlite_path_that_is_a_directory_is_refused(workdir):
    (workdir / "db").mkdir()
    assert_user_error(run_with_uri(workdir, f"sqlite:///{workdir}/db"), "is a directory")
    assert no_results_left(workdir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_sqlite_in_a_read_only_directory_is_refused(workdir):
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert_user_error(run_with_uri(workdir, f"sqlite:///{ro}/mlflow.db"), "cannot write", str(ro))
    finally:
        ro.chmod(0o700)
    assert no_results_left(workdir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_sqlite_file_is_refused(workdir):
    db = workdir / "mlflow.db"
    db.write_bytes(b"")
    db.chmod(0o400)
    assert_user_error(run_with_uri(workdir, f"sqlite:///{db}"), "cannot write", str(db))
    assert no_results_left(workdir)


def test_unwritable_directory_is_refused_even_for_root(workdir):
    """/proc accepts no new files, whatever the user: the write probe (not a permission-bit check)
    catches it."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    assert_user_error(run_with_uri(workdir, "sqlite:////proc/mlflow.db"), "cannot write", "/proc")
    assert no_results_left(workdir)


def test_credentials_in_a_refused_uri_are_redacted(workdir):
    line = assert_user_error(run_with_uri(workdir, "file://alice:s3cret@host/mlruns"), "maintenance mode")
    assert "s3cret" not in line and "alice" not in line


def test_good_uris_pass_unchanged(workdir):
    assert check_tracking_uri(f"sqlite:///{workdir}/mlflow.db") == f"sqlite:///{workdir}/mlflow.db"
    assert check_tracking_uri("sqlite:///rel.db") == f"sqlite:///{workdir}/rel.db"
    assert not (workdir / "rel.db").exists()  # the write probe leaves nothing behind
    assert list(workdir.iterdir()) == []
    for uri in ("http://127.0.0.1:5000", "postgresql://u:p@db/mlflow", "databricks"):
        assert check_tracking_uri(uri) == uri


def test_bench_ui_wants_an_existing_store(workdir):
    with pytest.raises(UserError, match="no MLflow store"):
        check_tracking_uri("sqlite:///mlflow.db", must_exist=True)


def test_bench_log_checks_the_uri_too(workdir):
    run_dir = workdir / "results" / "x" / "1"
    (run_dir / "cases" / "c").mkdir(parents=True)
    (run_dir / "cases" / "c" / "record.json").write_text('{"case_id": "x/c", "case_hash": "h", "status": "ok"}')
    result = CliRunner().invoke(app, ["log", str(run_dir), "--tracking-uri", "file:./mlruns"])
    assert_user_error(result, "maintenance mode")
    assert not (workdir / "mlruns").exists()


@pytest.mark.slow
def test_a_good_uri_still_runs_and_writes_results(workdir):
    result = run_with_uri(workdir, f"sqlite:///{workdir}/mlflow.db")
    assert result.exit_code == 0, result.output
    assert len(list((workdir / "results" / "urichk").iterdir())) == 1
