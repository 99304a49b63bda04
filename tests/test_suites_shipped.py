"""Every suite shipped in suites/ (the README's table) loads, validates and expands to cases."""
from pathlib import Path

import pytest

from bench.plugins import get_manager
from bench.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))


def test_the_readme_lists_every_shipped_suite():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert SUITES and all(f"`suites/{p.name}`" in readme for p in SUITES)


def data_overrides(path, tmp_path):
    """A suite that reads a dataset from disk gets a generated copy in the real format."""
    if path.stem != "cifar10":
        return []
    from test_data_cifar import fake_cifar10

    fake_cifar10(tmp_path / "cifar10")
    return [f"matrix.dataset=[{{name: cifar10, root: '{tmp_path / 'cifar10'}'}}]"]


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_expands(path, tmp_path):
    manager = get_manager()
    suite = load_suite(path, manager.registries, manager.versions(), overrides=data_overrides(path, tmp_path))
    assert suite.cases and len({c.id for c in suite.cases}) == len(suite.cases)
