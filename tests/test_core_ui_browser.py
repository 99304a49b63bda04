"""`bench ui` in a real browser: headless Chromium (Debian `chromium`) loads the MLflow UI started by
bench and shows the suite's experiment and its runs."""
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from bench.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def dump_dom(url: str, profile, budget_ms: int = 30000) -> str:
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_bench_ui_shows_the_experiment_and_runs_in_chromium(workdir):
    (workdir / "s.yaml").write_text(
        "name: uicheck\ndefaults: {train: {steps: 10, lr: 0.05}, eval: {num_samples: 16}}\n"
        "matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n")
    assert CliRunner().invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug"]).exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "bench.cli", "ui", "--port", str(port)], cwd=workdir,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        listing = dump_dom(f"http://127.0.0.1:{port}/#/experiments", workdir / "profile1")
        assert 'title="uicheck"' in listing
        exp_id = listing.split('title="uicheck"')[1].split('href="#/experiments/')[1].split('"')[0]
        page = dump_dom(f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs", workdir / "profile2", 45000)
        # the parent run is listed by name; its nested case run is counted (expanding it needs a click)
        assert "uicheck@" in page
        assert "2 matching runs" in " ".join(re.sub(r"<[^>]+>", " ", page).split())
    finally:
        ui.terminate()
        ui.wait(30)
