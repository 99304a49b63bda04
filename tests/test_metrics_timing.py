"""The timing metric (warm-up excluded, median and spread), and the 2-D metrics inside a real run."""
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.context import SampleOutput
from bench_metrics.testing import metric_context
from bench_metrics.timing import Timing
from test_metrics_distances import PointsData


def fake_resample(seconds, nfe=6.0):
    calls = []

    def resample(n):
        calls.append(n)
        return SampleOutput(torch.zeros(n, 2), seconds[len(calls) - 1], nfe)

    return resample, calls


def test_timing_excludes_warmup_and_reports_median_and_spread():
    # warm-up takes 10 s (excluded); repeats take 1, 2, 3, 4, 100 s (median 3 s, robust to the outlier)
    resample, calls = fake_resample([10.0, 1.0, 2.0, 3.0, 4.0, 100.0])
    ctx = metric_context(PointsData(), torch.zeros(4, 2), resample=resample,
                         case_config={"eval": {"batch_size": 32}})
    out = Timing(num_samples=64, repeats=5, warmup=1).compute(ctx)
    assert calls == [64] * 6
    assert out["samples_per_s"] == pytest.approx(64 / 3.0)
    assert out["samples_per_s_min"] == pytest.approx(64 / 100.0) and out["samples_per_s_max"] == pytest.approx(64.0)
    rates = sorted(64 / s for s in (1.0, 2.0, 3.0, 4.0, 100.0))
    assert out["samples_per_s_iqr"] > 0 and out["samples_per_s_iqr"] < rates[-1] - rates[0]
    # ms per network call on one batch: 64 samples = 2 batches of 32, 6 NFE each -> 12 calls
    assert out["ms_per_nfe"] == pytest.approx(1000 * 3.0 / 12)
    assert out["timing_repeats"] == 5 and out["timing_nfe"] == 6 and out["timing_num_samples"] == 64


def test_timing_defaults_to_one_eval_batch():
    resample, calls = fake_resample([1.0] * 4)
    ctx = metric_context(PointsData(), torch.zeros(4, 2), resample=resample, case_config={"eval": {"batch_size": 50}})
    Timing(repeats=3, warmup=1).compute(ctx)
    assert calls == [50] * 4


SUITE = """\
name: metricsrun
seed: 0
defaults:
  train: {steps: 40, batch_size: 128, lr: 0.05}
  eval: {num_samples: 800, batch_size: 200, grid: 0}
matrix:
  dataset: [toy2d/8gaussians]
  family: [fitgauss]
  sampler: [gauss]
metrics: [swd, mmd, energy, {name: timing, repeats: 3}, fid, bpd]
"""


def test_metrics_in_a_real_run(workdir):
    (workdir / "suite.yaml").write_text(SUITE)
    result = CliRunner().invoke(app, ["run", "suite.yaml", "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    record = json.loads(next(Path("results").glob("metricsrun/*/cases/*/record.json")).read_text())
    assert record["status"] == "ok", record.get("error")
    m = record["metrics"]
    for key in ("swd", "swd_floor", "mmd", "mmd_floor", "mmd_bandwidth", "energy", "energy_floor",
                "samples_per_s", "samples_per_s_iqr", "ms_per_nfe", "timing_repeats"):
        assert key in m and math.isfinite(m[key]), key
    assert m["swd_num_samples"] == 800 and m["swd_floor_num_samples"] == 800 and m["timing_repeats"] == 3
    # a diagonal Gaussian fitted to 8 well separated modes is far from the data: above the floor
    assert m["swd"] > 3 * m["swd_floor"] and m["energy"] > 3 * abs(m["energy_floor"])
    skipped = record["skipped_metrics"]
    assert "bpd" in skipped and "likelihood" in skipped["bpd"]
    assert any(k.startswith("fid") and "points" in v for k, v in skipped.items()), skipped
    assert any(k.startswith("metric:swd") for k in record["timings"])
