"""A benchmark script runs with benchmarks/ first on sys.path, so a script named like a standard-library
module (``concurrent.py``) shadows it for everything the script imports (torch imports
``concurrent.futures``): no script may take such a name."""
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_no_benchmark_script_shadows_a_standard_library_module():
    names = {p.stem for p in BENCHMARKS.glob("*.py")}
    assert names, "no benchmark scripts found"
    assert not names & set(sys.stdlib_module_names)
