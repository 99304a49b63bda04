"""`bench validate` and `bench run --dry-run` stay light: they read component signatures from source
(bench.signatures) and import neither torch, numpy, MLflow, torch-fidelity, matplotlib, scipy nor the
case runner; and loading the plugins does not
import the runner (the runner -> plugins dependency is one-way)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "mlflow", "torch_fidelity", "torchvision", "matplotlib", "scipy", "bench.runner", "bench.tracking")

PROBE = """
import json, sys
from bench.plugins import get_manager
out = {{"plugins": [m for m in {heavy!r} if m in sys.modules],
        "run_case_impls": len(get_manager().hook.bench_run_case.get_hookimpls())}}
from bench.cli import app
for argv in (["validate", "suites/quickstart.yaml"], ["run", "--dry-run", "suites/quickstart.yaml"]):
    sys.argv = ["bench", *argv]
    try:
        app()
    except SystemExit as exc:
        out[argv[0] + "_code"] = exc.code
    out[argv[0]] = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps(out))
"""


def test_validate_and_dry_run_import_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["run_case_impls"] == 1 and out["plugins"] == []
    assert out["validate_code"] in (0, None) and out["run_code"] in (0, None)
    assert out["validate"] == [] and out["run"] == []
