import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
os.environ.setdefault("BENCH_QUIET", "1")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a clean directory: mlflow.db, results/ and the store land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def manager():
    from bench.plugins import get_manager

    return get_manager(("bench_testplug",))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch intra-op thread for the tests: the tensors are small (one thread is faster), results
    do not depend on how many cores CI has, and a busy 2-core machine does not thrash."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
