"""`make run` installs only the runtime dependencies; `make test` adds the test extras, with its own
stamp, after a `make run` as on a fresh clone (issue 13, item 8). Checked with `make -n` (a dry run)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def plan(target, venv):
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "pip install" in line]


def test_make_run_on_a_fresh_clone_installs_no_test_extras(tmp_path):
    installs = plan("run", tmp_path / "venv")
    assert any(line.rstrip().endswith("-e .") for line in installs), installs
    assert not any("[test]" in line for line in installs), installs


def test_make_test_on_a_fresh_clone_installs_runtime_then_test_extras(tmp_path):
    installs = plan("test", tmp_path / "venv")
    assert [("torch==" in line, "[test]" in line) for line in installs] == [(True, False), (False, False),
                                                                          (False, True)], installs


def test_make_test_after_make_run_adds_only_the_test_extras(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".bench-installed").touch()  # what `make run` leaves behind
    assert plan("run", venv) == []
    installs = plan("test", venv)
    assert len(installs) == 1 and '-e ".[test]"' in installs[0], installs
    (venv / ".bench-test-installed").touch()
    assert plan("test", venv) == []
