"""`bench ref`: reference statistics are computed once, by `bench ref` or by the first case, and a
case that runs after `bench ref` finds them in the store (observable as fid_ref_cached = 1)."""
import json
from pathlib import Path

from typer.testing import CliRunner

from bench.cli import app

SUITE = """\
name: refs
seed: 0
defaults:
  train: {steps: 0}
  eval: {num_samples: 64, batch_size: 64, grid: 0}
matrix:
  dataset: [{name: gaussian_image, size: 8}]
  family: [oracle_vp]
  sampler: [{name: ddim, steps: 5}]
metrics:
  - {name: fid, extractor: random-proj}
  - {name: kid, extractor: random-proj}
  - swd
"""


def cli(*args):
    return CliRunner().invoke(app, list(args))


def test_ref_precomputes_once_and_the_run_reuses_it(workdir):
    (workdir / "s.yaml").write_text(SUITE)
    first = cli("ref", "s.yaml")
    assert first.exit_code == 0, first.output
    assert "fid[extractor=random-proj]: reference" in first.output and "computed" in first.output
    assert "swd: nothing to precompute" in first.output
    again = cli("ref", "s.yaml")
    assert again.exit_code == 0 and "computed" not in again.output and "cached" in again.output

    run = cli("run", "s.yaml", "-q")
    assert run.exit_code == 0, run.output
    record = json.loads(next(Path("results").rglob("record.json")).read_text())
    assert record["metrics"]["fid_ref_cached"] == 1 and record["metrics"]["kid_ref_cached"] == 1


def test_ref_on_a_dataset_name_and_clear_errors(workdir):
    points = cli("ref", "gaussian", "-m", "fid", "--num-samples", "50")
    assert points.exit_code == 0 and "does not apply to points data" in points.output, points.output
    bad = cli("ref", "digitz")
    assert bad.exit_code == 2 and "did you mean 'digits8'" in bad.output
    missing = cli("ref", "nothere.yaml")
    assert missing.exit_code == 2 and "nothere.yaml" in missing.output


LIKELIHOOD_SUITE = """\
name: lik
seed: 0
defaults:
  train: {steps: 0}
  eval: {num_samples: 32, batch_size: 32, grid: 0}
matrix:
  dataset: [{name: gaussian, dim: 2, n_test: 100}]
  family: [oracle_vp]
  sampler: [{name: ddim, steps: 5}, {name: ddim, steps: 10}]
metrics: [{name: nll, num_samples: 50}]
"""


def test_likelihood_is_measured_once_per_model(workdir):
    """Cases that differ only in the sampler share the model, so the second reads the first's NLL."""
    (workdir / "l.yaml").write_text(LIKELIHOOD_SUITE)
    run = cli("run", "l.yaml", "-q")
    assert run.exit_code == 0, run.output
    records = sorted((json.loads(p.read_text()) for p in Path("results").rglob("record.json")),
                     key=lambda r: r["started"])
    first, second = (r["metrics"] for r in records)
    assert first["nll_cached"] == 0 and second["nll_cached"] == 1
    assert first["nll"] == second["nll"] and first["nll_nfe"] == second["nll_nfe"]
