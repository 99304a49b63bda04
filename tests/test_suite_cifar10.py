"""suites/cifar10.yaml end to end at tiny size on a generated CIFAR-10 directory in the real format:
its families and sampler kinds, each sampler at 3 steps, 2 training steps of a narrow DDPM-layout
UNet (attention at 16x16 kept), 8 samples, random-proj features for FID/KID/PRC; `is` keeps the
Inception extractor and, with no weights offline, is skipped with its reason."""
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench_nets.unet import unet
from test_data_cifar import fake_cifar10

SUITE = Path(__file__).resolve().parents[1] / "suites" / "cifar10.yaml"
TINY_NET = {"name": "unet", "config": "ddpm_cifar10", "base": 8, "mults": [1, 2], "num_res_blocks": 1}


def flow(value) -> str:
    return json.dumps(value)  # JSON is YAML: --set parses it


def tiny_overrides(root: Path) -> list[str]:
    shipped = yaml.safe_load(SUITE.read_text())
    families = [{**f, "network": TINY_NET} for f in shipped["matrix"]["family"]]
    samplers, seen = [], set()
    for s in shipped["matrix"]["sampler"]:
        kind = (s["name"], s.get("scheduler"))
        if kind not in seen:
            seen.add(kind)
            samplers.append({**{k: v for k, v in s.items() if k != "id"}, "steps": 3})
    metrics = [{**m, "extractor": {"name": "random-proj", "dim": 16}} if m["name"] != "is" else m
               for m in shipped["metrics"]]
    sets = {"matrix.dataset": [{"name": "cifar10", "root": str(root)}], "matrix.family": families,
            "matrix.sampler": samplers, "metrics": metrics, "train.steps": 2, "train.batch_size": 8,
            "train.warmup": 0, "eval.num_samples": 8, "eval.batch_size": 8, "eval.grid": 0}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={flow(v)}")]


@pytest.mark.slow  # ~1 s of case work, ~30 s of run machinery (MLflow, 6 cases) on the shared 2-core machine
def test_cifar10_suite_end_to_end_at_tiny_size(workdir, monkeypatch):
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch-home"))  # no Inception weights anywhere
    fake_cifar10(workdir / "cifar-10-batches-py", per_batch=8)
    result = CliRunner().invoke(app, ["run", str(SUITE), *tiny_overrides(workdir), "-q", "--threads", "1"])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    failed = {r["case_id"]: r.get("error") for r in records if r["status"] != "ok"}
    assert result.exit_code == 0 and not failed, (result.output[-3000:], failed)
    assert len(records) == 6  # 2 families x (ancestral, ddim, DPM-Solver++)
    assert {r["config"]["family"]["name"] for r in records} == {"ddpm", "ni_ddpm"}
    assert sum(r["trained"] for r in records) == 2  # one training per family
    tiny = unet([3, 32, 32], **{k: v for k, v in TINY_NET.items() if k != "name"})
    for r in records:
        m = r["metrics"]
        assert {"fid", "fid_floor", "kid", "prc_precision", "num_params"} <= set(m)
        assert m["fid_num_samples"] == 8
        skipped = {k.split("[")[0]: v for k, v in r["skipped_metrics"].items()}
        assert "is_mean" not in m and "no InceptionV3 weights" in skipped["is"]
        assert m["num_params"] == sum(p.numel() for p in tiny.parameters())


def test_the_shipped_suite_asks_for_the_full_size_run(tmp_path, manager):
    from bench.suite import load_suite

    fake_cifar10(tmp_path / "cifar10")
    overrides = [f"matrix.dataset={flow([{'name': 'cifar10', 'root': str(tmp_path / 'cifar10')}])}"]
    suite = load_suite(SUITE, manager.registries, manager.versions(), overrides=overrides)
    assert len(suite.cases) == 2 * 11
    steps = sorted({c.sampler.get("steps") for c in suite.cases})
    assert steps[0] == 10 and steps[-1] == 1000
    assert {c.sampler["name"] for c in suite.cases} == {"ancestral", "ddim", "diffusers"}
    for c in suite.cases:
        assert c.family["network"] == {"name": "unet", "config": "ddpm_cifar10"}
        assert c.config()["eval"]["num_samples"] == 50000
        assert {m["name"] for m in c.metrics} == {"fid", "kid", "prc", "is"}
        assert all(m["extractor"]["name"] == "inception-v3-compat" for m in c.metrics)
