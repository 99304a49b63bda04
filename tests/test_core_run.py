"""End-to-end runs through the CLI with the test plugin: MLflow layout, train once / sample many,
failure isolation, exit codes, resume, results directory."""
import json
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.tracking import search_runs_frame

SUITE = """\
name: runs
seed: 0
defaults:
  train: {steps: 60, batch_size: 64, lr: 0.05}
  eval: {num_samples: 200, batch_size: 64}
matrix:
  dataset: [toy2d/moons]
  family:
    - fitgauss
    - {name: fitgauss, fail_at: nan, id: broken}
  sampler: [gauss, {name: gauss, steps: 7}]
metrics: [mean_err]
"""


def run_cli(*args):
    return CliRunner().invoke(app, [*args, "--plugins", "bench_testplug"])


@pytest.fixture
def finished_run(workdir):
    (workdir / "suite.yaml").write_text(SUITE)
    result = run_cli("run", "suite.yaml", "-q")
    return workdir, result


def search(uri="mlflow.db", experiment="runs"):
    uri = "sqlite:///" + str(Path(uri).resolve())
    return search_runs_frame(uri, [experiment], max_results=1000)


def test_failing_case_does_not_stop_the_suite_and_exit_code_is_1(finished_run):
    workdir, result = finished_run
    assert result.exit_code == 1, result.output
    assert result.output.count("FAILED: CaseFailed: training loss became nan") == 2
    assert result.output.count("OK ") == 2
    assert f"bench ui --tracking-uri sqlite:///{workdir}/mlflow.db" in result.output


def test_mlflow_parent_children_tags_params_metrics_artifacts(finished_run):
    workdir, _ = finished_run
    runs = search()
    parents = runs[runs["tags.bench.kind"] == "suite"]
    children = runs[runs["tags.bench.kind"] == "case"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents["run_id"].iloc[0]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert parents["status"].iloc[0] == "FAILED"
    ok = children[children["tags.bench.status"] == "ok"]
    failed = children[children["tags.bench.status"] == "failed"]
    assert len(ok) == 2 and len(failed) == 2
    assert set(failed["status"]) == {"FAILED"} and set(ok["status"]) == {"FINISHED"}
    # run name = case id, tags
    assert set(children["tags.mlflow.runName"]) == set(children["tags.bench.case_id"])
    assert "runs/toy2d/moons/fitgauss/gauss[steps=7]/seed=0" in set(children["tags.bench.case_id"])
    for col in ("tags.bench.case_hash", "tags.bench.version", "tags.bench.machine.cpu"):
        assert children[col].notna().all(), col
    # dotted params
    row = ok[ok["tags.bench.sampler"] == "gauss[steps=7]"].iloc[0]
    assert row["params.dataset.name"] == "toy2d/moons"
    assert row["params.family.name"] == "fitgauss"
    assert row["params.sampler.name"] == "gauss" and row["params.sampler.steps"] == "7"
    assert row["params.train.steps"] == "60" and row["params.seed"] == "0"
    # metrics, including NFE measured by hooks (7 network calls per batch)
    assert row["metrics.nfe"] == 7
    for m in ("train_time_s", "sample_time_s", "samples_per_s", "ms_per_nfe", "mean_err", "peak_rss_mb"):
        assert row[f"metrics.{m}"] > 0, m
    client = mlflow.MlflowClient("sqlite:///" + str(Path("mlflow.db").resolve()))
    history = client.get_metric_history(row["run_id"], "train_loss")
    assert len(history) > 1 and [h.step for h in history] == sorted(h.step for h in history)
    arts = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"case.yaml", "metrics.json", "samples.png", "loss.png"} <= arts
    bad = failed.iloc[0]
    assert "nan" in bad["tags.bench.error"]
    assert "traceback.txt" in {a.path for a in client.list_artifacts(bad["run_id"])}


def test_second_sampler_reuses_the_trained_model(finished_run):
    workdir, _ = finished_run
    records = [json.loads(p.read_text()) for p in Path("results").glob("runs/*/cases/*/record.json")]
    assert records, _.output
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["started"])
    assert len(ok) == 2, _.output
    assert len(ok) == 2
    assert ok[0]["train_key"] == ok[1]["train_key"]
    assert ok[0]["trained"] is True and ok[1]["trained"] is False
    # the reused model gives the same training metrics and the checkpoint exists once
    assert ok[0]["metrics"]["train_time_s"] == ok[1]["metrics"]["train_time_s"]
    assert len(list(Path(".bench-store/checkpoints").glob("*/*/checkpoint.pt"))) == 1


def test_results_directory_is_the_source_of_truth(finished_run):
    workdir, _ = finished_run
    run_dir = next(Path("results/runs").iterdir())
    assert (run_dir / "suite.yaml").exists() and (run_dir / "summary.md").exists()
    assert len(list(run_dir.glob("cases/*/record.json"))) == 4
    # re-feed a fresh MLflow store from it
    result = CliRunner().invoke(app, ["log", str(run_dir), "--tracking-uri", "sqlite:///again.db"])
    assert result.exit_code == 0, result.output
    runs = search("again.db")
    assert (runs["tags.bench.kind"] == "case").sum() == 4


def test_resume_skips_finished_cases(finished_run):
    workdir, _ = finished_run
    result = run_cli("run", "suite.yaml", "-q", "--executor", "local")  # local prints "[i/n] case" as each starts
    assert "2 already finished" in result.output
    assert result.output.count("[1/2]") == 1 and "[3/" not in result.output
    result = run_cli("run", "suite.yaml", "-q", "--no-resume", "--executor", "local")
    assert "[4/4]" in result.output


def test_same_seed_gives_identical_metrics(finished_run):
    workdir, _ = finished_run
    run_cli("run", "suite.yaml", "-q", "--no-resume", "--store", "other-store")
    runs = search()
    ok = runs[(runs["tags.bench.kind"] == "case") & (runs["tags.bench.status"] == "ok")]
    for _, group in ok.groupby("tags.bench.case_id"):
        assert len(group) == 2
        assert group["metrics.mean_err"].nunique() == 1


def test_dry_run_lists_cases_and_pruned(workdir):
    (workdir / "suite.yaml").write_text(SUITE.replace("[gauss, {name: gauss, steps: 7}]", "[gauss, other]"))
    result = run_cli("run", "suite.yaml", "--dry-run")
    assert result.exit_code == 0
    assert "2 case(s)" in result.output and "pruned 2 incompatible" in result.output
    assert "requires something-else" in result.output
    assert not Path("mlflow.db").exists()


def test_compare_table_markdown_csv_and_plot(finished_run):
    workdir, _ = finished_run
    result = CliRunner().invoke(app, ["compare", "-e", "runs", "--metric", "mean_err", "--format", "csv",
                                      "--rows", "family", "--cols", "sampler", "--plot", "p.png", "--x", "nfe"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "family,sampler,metric,mean,lo,hi,n,interval,mixed_versions,half_width,n_counts"
    assert lines[1].startswith("fitgauss,gauss,mean_err,") and lines[2].startswith("fitgauss,gauss[steps=7],")
    assert Path("p.png").stat().st_size > 1000
    result = CliRunner().invoke(app, ["compare", "-e", "runs", "--metric", "mean_eror"])
    assert result.exit_code == 2 and "did you mean 'mean_err'" in result.output
    result = CliRunner().invoke(app, ["compare", "-e", "rnus"])
    assert result.exit_code == 2 and "did you mean 'runs'" in result.output
