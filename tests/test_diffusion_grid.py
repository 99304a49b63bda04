"""The realised sampling grid: the table in docs/diffusion.md is the output of
``bench_diffusion.grid_table`` (itself checked against the closed-form DDPM log-SNR), and
``bench run --dry-run --show-grid`` prints the times each sampler really visits."""
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.rng import BatchRNG
from bench_diffusion.grid_table import lambda_steps, table
from bench_diffusion.testing import build, dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "diffusion.md"


def test_docs_table_is_the_computed_one():
    text = DOCS.read_text()
    block = re.search(r"<!-- grid-table[^>]*-->\n(.*?)\n<!-- /grid-table -->", text, re.S)
    assert block, "docs/diffusion.md lost its grid table markers"
    assert block[1] == table(), "refresh the table with `python -m bench_diffusion.grid_table`"


@pytest.mark.parametrize("spacing,idx", [
    ("leading", np.arange(10) * 100 + 1),                                   # diffusers: arange(N) * (T // N), + 1
    ("trailing", np.round(np.arange(1000, 0, -100.0)).astype(int)),          # round(arange(T, 0, -T/N)) - 1, + 1
])
def test_lambda_steps_match_the_closed_form(spacing, idx):
    """lambda_k = 1/2 log(abar_k / (1 - abar_k)), abar_k = prod_{i <= k} (1 - beta_i), beta linear
    1e-4..0.02 over T = 1000 (Ho et al. 2020), at the diffusers timestep indices."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    lam = 0.5 * np.log(abar / (1 - abar))[np.sort(idx)[::-1] - 1]
    times, dl = lambda_steps(spacing, 10)
    np.testing.assert_allclose(times, np.sort(idx)[::-1] / 1000)
    np.testing.assert_allclose(dl, np.diff(lam), rtol=1e-6)


SUITE = """\
name: grid
matrix:
  dataset: [{name: gaussian, dim: 2}]
  family: [oracle_vp]
  sampler: [{name: ddim, steps: 10}, {name: dpmpp_2m, steps: 8, spacing: trailing}, {name: euler_maruyama, steps: 5}]
metrics: []
"""


def test_show_grid_prints_the_times_the_samplers_visit(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--show-grid"])
    assert result.exit_code == 0, result.output
    out = result.output.split("realised sampling grids:\n")[1].splitlines()
    data = dataset("gaussian", dim=2)
    fam = build("family", {"name": "oracle_vp"}, data)
    for i, (spec, spacing) in enumerate([({"name": "ddim", "steps": 10}, "leading"),
                                         ({"name": "dpmpp_2m", "steps": 8, "spacing": "trailing"}, "trailing")]):
        sampler = build("sampler", spec, data)
        sampler.sample(fam, BatchRNG(0, 2))  # records the grid it really walked
        times = sampler.realised["t"]
        header, lams = out[3 * i + 1], out[3 * i + 2]
        assert header.strip().startswith(f"{spacing}, {len(times)} times: t = ")
        shown = [float(v) for v in header.split("t = ")[1].split()]
        np.testing.assert_allclose(shown, times, rtol=1e-3)
        lam = np.log(np.array(sampler.realised["alpha"]) / np.array(sampler.realised["sigma"]))
        steps = [float(v) for v in lams.split("lambda steps: ")[1].split(";")[0].split()]
        np.testing.assert_allclose(steps, np.diff(lam), rtol=1e-3)
    assert "leading" in out[1] and "last/previous = 4.72" in out[2]
    assert "no fixed time grid" in out[7]


def test_show_grid_needs_dry_run(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    result = CliRunner().invoke(app, ["run", str(path), "--show-grid"])
    assert result.exit_code == 2 and "--show-grid goes with --dry-run" in result.output
