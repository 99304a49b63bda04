"""Record the id, hash, train key and resolved config of every case of every shipped suite.

``python tests/support/record_suite_cases.py > tests/data/suite_cases.json`` wrote the fixture that
``tests/test_core_suite_identity.py`` compares against: a refactor of spec resolution must leave every
case id, label and hash of ``suites/*.yaml`` unchanged.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def record() -> dict:
    from bench.plugins import get_manager
    from bench.store import content_key
    from bench.suite import load_suite

    manager = get_manager()
    out = {}
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        if path.stem == "cifar10":  # needs a CIFAR-10 folder; tests/test_suite_cifar10.py checks its cases
            continue
        suite = load_suite(path, manager.registries, manager.versions())
        out[path.name] = {
            "cases": [{"id": c.id, "hash": c.hash, "train_key": c.train_key, "labels": c.labels(),
                       "config_key": content_key("config", c.config())[:16], "versions": c.versions, "skipped_metrics": c.skipped_metrics}
                      for c in suite.cases],
            "pruned": [[p.dataset, p.family, p.sampler, p.seed, p.reason] for p in suite.pruned],
        }
    return out


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=None, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")
