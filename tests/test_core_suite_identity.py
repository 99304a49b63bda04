"""Resolving specs must not change what a shipped suite means: every case of every ``suites/*.yaml``
keeps the id, labels, resolved config, pruning and skipped metrics recorded on main before the
one-pass resolve refactor (``tests/data/suite_cases.json``, written by
``tests/support/record_suite_cases.py``).

One deliberate change: a nested component's version is keyed under its parent's kind. On main every
nested version was keyed ``family:...``, so FID/KID/PRC's extractor (``metric:extractor:auto``) was
``family:extractor:auto`` and went into the train key (a new bench_metrics version would have
retrained every model). Cases with such a metric therefore get a new hash and train key; the test
checks that recomputing them with main's key gives main's values exactly, i.e. nothing else changed.
"""
import json
from pathlib import Path

import pytest

from bench.plugins import get_manager
from bench.store import content_key
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "suite_cases.json").read_text())


def _main_versions(case) -> dict:
    """The case's versions keyed as main keyed them (every nested component under ``family:``)."""
    out = {}
    for key, version in case.versions.items():
        parts = key.split(":")
        out[f"family:{parts[1]}:{parts[2]}" if len(parts) == 3 else key] = version
    return out


@pytest.mark.parametrize("suite_file", sorted(RECORDED))
def test_shipped_suite_cases_are_unchanged(suite_file):
    manager = get_manager()
    suite = load_suite(ROOT / "suites" / suite_file, manager.registries, manager.versions())
    want = RECORDED[suite_file]
    assert [c.id for c in suite.cases] == [c["id"] for c in want["cases"]]
    assert [[p.dataset, p.family, p.sampler, p.seed, p.reason] for p in suite.pruned] == want["pruned"]
    renamed = 0
    for case, rec in zip(suite.cases, want["cases"]):
        assert case.labels() == rec["labels"]
        assert content_key("config", case.config())[:16] == rec["config_key"], case.id
        assert case.skipped_metrics == rec["skipped_metrics"]
        old = _main_versions(case)
        assert old == rec["versions"], case.id
        assert content_key("case", case.config(), old)[:16] == rec["hash"]
        old_train = {k: v for k, v in old.items() if k.startswith(("dataset:", "family:"))}
        assert content_key("train", case.dataset, case.family, case.train, case.seed, old_train) == rec["train_key"]
        if old == case.versions:
            assert (case.hash, case.train_key) == (rec["hash"], rec["train_key"]), case.id
        else:
            renamed += 1
            assert all(k.startswith("metric:") for k in set(case.versions) - set(old))
    # the fixture's versions are those of this checkout's plugins: a version bump needs a new fixture
    assert renamed == sum(any(k.startswith("family:extractor:") for k in c["versions"]) for c in want["cases"])


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
