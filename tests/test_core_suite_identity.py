"""What a shipped suite means must not change by accident: every case of every ``suites/*.yaml``
keeps the id, labels, resolved config, versions, hash, train key, pruning and skipped metrics recorded in
``tests/data/suite_cases.json`` (written by ``tests/support/record_suite_cases.py``; cifar10.yaml, which
needs a CIFAR-10 folder, is checked by ``tests/test_suite_cifar10.py``).

History: the fixture was first recorded before the one-pass resolve refactor (issue 12) and that
refactor left every case unchanged except one deliberate fix (a nested component's version is keyed
under its parent's kind, so FID's extractor no longer enters the train key; see the test below). A
deliberate change of meaning regenerates the fixture, and its commit says why.
"""
import json
from pathlib import Path

import pytest

from bench.plugins import get_manager
from bench.store import content_key
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "suite_cases.json").read_text())


@pytest.mark.parametrize("suite_file", sorted(RECORDED))
def test_shipped_suite_cases_are_unchanged(suite_file):
    manager = get_manager()
    suite = load_suite(ROOT / "suites" / suite_file, manager.registries, manager.versions())
    want = RECORDED[suite_file]
    assert [c.id for c in suite.cases] == [c["id"] for c in want["cases"]]
    assert [[p.dataset, p.family, p.sampler, p.seed, p.reason] for p in suite.pruned] == want["pruned"]
    for case, rec in zip(suite.cases, want["cases"]):
        assert case.labels() == rec["labels"], case.id
        assert content_key("config", case.config())[:16] == rec["config_key"], case.id
        assert case.skipped_metrics == rec["skipped_metrics"], case.id
        assert case.versions == rec["versions"], case.id
        assert (case.hash, case.train_key) == (rec["hash"], rec["train_key"]), case.id


def test_a_metric_plugin_version_changes_the_case_hash_but_not_the_train_key():
    """Regression: the nested extractor of fid/kid was versioned as ``family:extractor:auto``, so a new
    metrics plugin version changed the train key and retrained every model."""
    manager = get_manager()
    path = ROOT / "suites" / "quickstart.yaml"
    before = load_suite(path, manager.registries, manager.versions())
    plugin = manager.registries.feature_extractor.entry("auto").plugin
    assert plugin == manager.registries.metric.entry("fid").plugin
    after = load_suite(path, manager.registries, {**manager.versions(), plugin: "999"})
    assert [c.train_key for c in before.cases] == [c.train_key for c in after.cases]
    assert all(a.hash != b.hash for a, b in zip(before.cases, after.cases))
    assert all(c.versions["metric:extractor:auto"] == "999" for c in after.cases)
