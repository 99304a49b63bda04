"""suites/guidance.yaml end to end through `bench run` at tiny size (slow)."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_guidance_suite_end_to_end(workdir):
    result = CliRunner().invoke(app, ["run", str(ROOT / "suites" / "guidance.yaml"), "-q", "--threads", "1",
                                      "--set", "train.steps=20", "--set", "eval.num_samples=60",
                                      "--set", "eval.batch_size=32", "--set", "eval.grid=0"])
    records = {r["config"]["sampler"].get("guidance", 0.0): r
               for r in (json.loads(p.read_text()) for p in Path("results").rglob("record.json"))}
    assert result.exit_code == 0 and all(r["status"] == "ok" for r in records.values()), result.output[-3000:]
    assert sorted(records) == [0.0, 1.0, 3.0]
    assert sum(r["trained"] for r in records.values()) == 1  # one conditional model, sampled three ways
    for w, r in records.items():
        m = r["metrics"]
        assert m["nfe"] == (20 if w == 0 else 40)  # a guided step calls the network twice
        assert {"fid", "prc_precision", "class_acc", "class_acc_ci_lo", "class_acc_real",
                "fid_class_mean", "fid_class_0"} <= set(m)
        assert 0 <= m["class_acc"] <= 1
