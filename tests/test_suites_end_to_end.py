"""The shipped suites run end to end through `bench run` at reduced size (slow: minutes each).

Every case must finish ok: this catches a component pair the suite combines but the plugins cannot
run, a metric that fails on a family's samples, or an expansion that no longer matches the code.
The scientific acceptance numbers (e.g. oracle samplers within 2x of swd_floor) come from the
full-size runs recorded in docs/results.md, not from these shrunken ones.
"""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "eval.grid=0", "--set", "budget.timeout_s=600", "-q", "--threads", "1"]


def run_suite(name: str, *overrides: str):
    result = CliRunner().invoke(app, ["run", str(ROOT / "suites" / name), *SMALL, *overrides])
    records = [json.loads(p.read_text()) for p in Path("results").rglob("record.json")]
    failed = {r["case_id"]: r.get("error") for r in records if r["status"] != "ok"}
    assert result.exit_code == 0 and not failed, (result.output[-3000:], failed)
    return records


@pytest.mark.slow
def test_quickstart_end_to_end(workdir):
    records = run_suite("quickstart.yaml", "--set", "train.steps=20")
    assert len(records) == 10
    digits = [r for r in records if "/digits8/" in r["case_id"]]
    assert all({"fid", "fid_floor", "kid", "swd", "samples_per_s"} <= set(r["metrics"]) for r in digits)


@pytest.mark.slow
def test_diffusion_suite_end_to_end(workdir):
    # the bootstrap intervals are tested in test_metrics_bootstrap.py; here they would only add SWD's
    # B L (n + m) replicate cost (a 5000-point reference) to each of the ~150 cases
    records = run_suite("diffusion.yaml", "--set", "train.steps=3", "--set", "eval.num_samples=16",
                        "--set", "eval.batch_size=16",
                        "--set", "metrics=[{name: swd, bootstrap: 0}, {name: fid, bootstrap: 0}, "
                                 "{name: kid, bootstrap: 0}, {name: prc, bootstrap: 0}]")
    assert len(records) > 100
    assert {r["config"]["family"]["name"] for r in records} == {"ddpm", "ni_ddpm", "smld", "ni_smld",
                                                                "vp_sde", "ve_sde"}
    assert sum(r["trained"] for r in records) == 12  # 8 families x 2 datasets - 4 excluded: trained once each
    digits = [r for r in records if "/digits8/" in r["case_id"]]
    assert all({"fid", "fid_floor", "kid", "prc_precision", "swd"} <= set(r["metrics"]) for r in digits)
    assert sum(r["metrics"]["fid_ref_cached"] == 0 for r in digits) == 1  # reference statistics computed once


@pytest.mark.acceptance  # 389 cases: tens of minutes on 2 cores (make acceptance)
def test_samplers_oracle_suite_end_to_end(workdir):
    records = run_suite("samplers-oracle.yaml", "--set", "eval.num_samples=200", "--set", "eval.batch_size=200")
    assert len(records) == 389
    assert all(r["metrics"]["nfe"] > 0 and "swd_floor" in r["metrics"] for r in records)


@pytest.mark.slow
def test_flows_suite_end_to_end(workdir):
    records = run_suite("flows.yaml", "--set", "train.steps=2", "--set", "eval.num_samples=8",
                        "--set", "eval.batch_size=8",
                        "--set", "metrics=[{name: bpd, num_samples: 8, batch_size: 8}, {name: fid}, ode_stats, "
                                 "{name: video_recon, num_videos: 4}]")
    families = {r["config"]["family"].get("id") or r["config"]["family"]["name"] for r in records}
    assert {"cnf", "mrcnf1", "mrcnf2_haar", "mrcnf3_unimodular", "latent_ode_det", "latent_ode_vae"} <= families
    digits = [r for r in records if "/digits16/" in r["case_id"]]
    assert all("bpd" in r["metrics"] and "num_params" in r["metrics"] for r in digits)
