"""Seeds as a first-class axis (issue 17, item 1): ``seeds`` (training seeds) and ``sample_seeds``
(sampling seeds) in a suite's ``defaults`` or on a dataset/family entry; one training per training seed;
the sampling RNG and the metrics' own randomness follow the sample seed; suites without a sample seed
keep their case ids and hashes."""
import json
import re
import textwrap

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.suite import load_suite

LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")

BASE = """\
name: sd
defaults:
  train: {steps: 5}
  eval: {num_samples: 50, batch_size: 50, grid: 0}
%s
matrix:
  dataset: [toy2d/moons]
  family: [fitgauss]
  sampler: [gauss]
%s
metrics: [mean_err]
"""


def suite_text(defaults: str = "", matrix: str = "", extra: str = "") -> str:
    return BASE % (textwrap.indent(defaults, "  ") if defaults else "", matrix) + extra


def load(manager, tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_suite(path, manager.registries, manager.versions())


def test_two_seeds_by_three_sample_seeds_is_two_trainings_and_six_cases(manager, tmp_path):
    suite = load(manager, tmp_path, suite_text("seeds: 2\nsample_seeds: 3"))
    assert [(c.seed, c.sample_seed) for c in suite.cases] == [(s, t) for s in (0, 1) for t in (0, 1, 2)]
    assert len(suite.cases) == 6 and len({c.hash for c in suite.cases}) == 6
    assert len({c.train_key for c in suite.cases}) == 2  # the train key holds no sample seed
    by = {(c.seed, c.sample_seed): c for c in suite.cases}
    assert by[(0, 2)].train_key == by[(0, 0)].train_key != by[(1, 2)].train_key
    # a sample seed equal to the training seed is the case as it was: same id, labels, config, hash
    plain = {c.seed: c for c in load(manager, tmp_path, suite_text("seeds: 2"), "plain.yaml").cases}
    for s in (0, 1):
        assert (by[(s, s)].id, by[(s, s)].hash, by[(s, s)].labels(), by[(s, s)].config()) == \
            (plain[s].id, plain[s].hash, plain[s].labels(), plain[s].config())
    other = by[(0, 2)]
    assert other.id == "sd/toy2d/moons/fitgauss/gauss/seed=0/sample_seed=2"
    assert other.labels()["sample_seed"] == "2" and other.config()["sample_seed"] == 2
    assert "sample_seed" not in by[(1, 1)].labels() and "sample_seed" not in by[(1, 1)].config()
    result = CliRunner().invoke(app, ["run", str(tmp_path / "suite.yaml"), "--dry-run", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    assert "6 case(s)" in result.output and "2 distinct model(s) to train" in result.output


def test_counts_lists_and_entry_overrides(manager, tmp_path):
    suite = load(manager, tmp_path, suite_text("seeds: 5"))
    assert [c.seed for c in suite.cases] == [0, 1, 2, 3, 4] and {c.sample_seed for c in suite.cases} == {0, 1, 2, 3, 4}
    suite = load(manager, tmp_path, suite_text("seeds: [3, 9]\nsample_seeds: [7]"))
    assert [(c.seed, c.sample_seed) for c in suite.cases] == [(3, 7), (9, 7)]
    # the family entry's seeds win over the dataset entry's, which win over the defaults
    text = suite_text("seeds: 2\nsample_seeds: [5]") \
        .replace("dataset: [toy2d/moons]", "dataset: [{name: toy2d/moons, seeds: [4], sample_seeds: 2}]") \
        .replace("family: [fitgauss]", "family: [fitgauss, {name: fitgauss, id: fg2, seeds: [8, 9]}]")
    suite = load(manager, tmp_path, text)
    got = [(c.labels()["family"], c.seed, c.sample_seed) for c in suite.cases]
    assert got == [("fitgauss", 4, 0), ("fitgauss", 4, 1), ("fg2", 8, 0), ("fg2", 8, 1), ("fg2", 9, 0), ("fg2", 9, 1)]
    # --set seeds=N sets the default and every entry's
    path = tmp_path / "suite.yaml"
    suite = load_suite(path, manager.registries, manager.versions(), overrides=["seeds=1", "sample_seeds=[3]"])
    assert {(c.seed, c.sample_seed) for c in suite.cases} == {(0, 3)}


def test_matrix_seed_still_works_and_cannot_be_given_twice(manager, tmp_path):
    suite = load(manager, tmp_path, suite_text(matrix="  seed: [1, 2]"))
    assert [c.id for c in suite.cases] == ["sd/toy2d/moons/fitgauss/gauss/seed=1", "sd/toy2d/moons/fitgauss/gauss/seed=2"]
    suite = load(manager, tmp_path, suite_text("sample_seeds: 2", matrix="  seed: [1]"))
    assert [(c.seed, c.sample_seed) for c in suite.cases] == [(1, 0), (1, 1)]
    code, lines = validate(tmp_path, suite_text("seeds: 2", matrix="  seed: [1]"))
    assert code == 2 and len(lines) == 1 and "matrix.seed and defaults.seeds both give the training seeds" in lines[0]
    assert LINE.match(lines[0])["line"] == "10"


def validate(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"])
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize("value, words", [
    ("0", "seeds must be a positive count or a list of seeds, got 0"),
    ("-2", "seeds must be a positive count or a list of seeds, got -2"),
    ("2.5", "seeds must be a count or a non-empty list of non-negative integers, got 2.5"),
    ("true", "got True"),
    ("three", "got 'three'"),
    ("[]", "non-empty list"),
    ("[0, -1]", "non-empty list of non-negative integers"),
    ("[1, 1]", "seeds lists seed 1 more than once"),
])
def test_bad_seeds_are_one_located_line(tmp_path, value, words):
    for key, where in (("seeds", "defaults"), ("sample_seeds", "defaults"), ("seeds", "family")):
        if where == "defaults":
            text = suite_text(f"{key}: {value}")
        else:
            text = suite_text().replace("family: [fitgauss]", f"family:\n    - name: fitgauss\n      {key}: {value}")
        line = 1 + text.splitlines().index(next(x for x in text.splitlines() if x.strip().startswith(f"{key}:")))
        code, lines = validate(tmp_path, text)
        assert code == 2 and len(lines) == 1, (key, where, lines)
        m = LINE.match(lines[0])
        assert m and int(m["line"]) == line and words.replace("seeds", key, 1) in m["msg"], (key, where, lines)
        assert "Traceback" not in lines[0]


def test_seeds_on_a_sampler_or_an_include_case_are_errors(tmp_path):
    code, lines = validate(tmp_path, suite_text().replace("sampler: [gauss]", "sampler: [{name: gauss, seeds: 2}]"))
    assert code == 2 and len(lines) == 1 and "'seeds' goes on a dataset or family entry or in defaults" in lines[0]
    code, lines = validate(tmp_path, suite_text(extra="include_cases:\n  - {dataset: toy2d/moons, "
                                                "family: {name: fitgauss, seeds: 2}, sampler: gauss}\n"))
    assert code == 2 and len(lines) == 1 and "give it 'seed' and 'sample_seed'" in lines[0]
    code, lines = validate(tmp_path, suite_text(extra="include_cases:\n  - {dataset: toy2d/moons, "
                                                "family: fitgauss, sampler: gauss, sample_seed: -1}\n"))
    assert code == 2 and len(lines) == 1 and "sample_seed must be a non-negative integer" in lines[0]


def test_exclude_and_include_cases_use_the_sample_seed(manager, tmp_path):
    suite = load(manager, tmp_path, suite_text("seeds: 2\nsample_seeds: 3", extra=(
        "exclude: [{sample_seed: 1}, {seed: 1, sample_seed: 2}]\n"
        "include_cases:\n  - {dataset: toy2d/moons, family: fitgauss, sampler: gauss, seed: 5, sample_seed: 6}\n")))
    got = [(c.seed, c.sample_seed) for c in suite.cases]
    assert got == [(0, 0), (0, 2), (1, 0), (5, 6)]
    assert suite.cases[-1].id.endswith("/seed=5/sample_seed=6")


def test_sample_seed_drives_sampling_not_training(manager, tmp_path):
    """One training seed, sample seeds 0 and 1: one model trained, two sample sets. (The sample seed 0
    case is the plain case: same hash, hence the same sampling stream as before sample seeds existed.)"""
    from bench.runner import CaseJob, RunSettings, run_case

    suite = load(manager, tmp_path, suite_text("sample_seeds: 2"))
    settings = RunSettings(str(tmp_path / "store"), str(tmp_path / "results"), ("bench_testplug",), quiet=True)
    a0, a1 = (run_case(CaseJob(c.to_dict(), settings)) for c in suite.cases)
    assert (a0["status"], a1["status"]) == ("ok", "ok"), (a0.get("error"), a1.get("error"))
    assert a0["train_key"] == a1["train_key"] and (a0["trained"], a1["trained"]) == (True, False)
    assert a0["metrics"]["final_loss"] == a1["metrics"]["final_loss"]  # one model
    assert a0["metrics"]["mean_err"] != a1["metrics"]["mean_err"]  # two sample sets
    assert (a0["sample_seed"], a1["sample_seed"]) == (0, 1)
    again = run_case(CaseJob(suite.cases[1].to_dict(), settings))  # the stream is a function of the sample seed
    assert again["metrics"]["mean_err"] == a1["metrics"]["mean_err"]


@pytest.mark.slow
def test_bench_run_logs_the_sample_seed_as_a_tag_and_param(workdir):
    from bench.tracking import search_runs_frame

    (workdir / "a.yaml").write_text(suite_text("sample_seeds: 2"))
    result = CliRunner().invoke(app, ["run", "a.yaml", "-q", "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = search_runs_frame(uri, ["sd"], filter_string="tags.`bench.kind` = 'case'")
    assert sorted(runs["tags.bench.sample_seed"]) == ["0", "1"] and sorted(runs["params.sample_seed"]) == ["0", "1"]
    assert set(runs["tags.bench.seed"]) == {"0"}
    by = dict(zip(runs["tags.bench.sample_seed"], runs["tags.bench.case_id"]))
    assert by == {"0": "sd/toy2d/moons/fitgauss/gauss/seed=0", "1": "sd/toy2d/moons/fitgauss/gauss/seed=0/sample_seed=1"}


def test_a_huge_seed_count_is_refused_before_expanding(tmp_path):
    code, lines = validate(tmp_path, suite_text("seeds: 1000000000"))
    assert code == 2 and len(lines) == 1 and "seeds: 1,000,000,000 seeds is more than 10,000" in lines[0]


def test_an_include_name_the_file_system_refuses_is_one_line(tmp_path):
    """Found by the fuzz test of the shipped suites once results-diffusion-seeds.yaml joined them: an
    ``include:`` of 300 characters raised OSError (File name too long), a traceback."""
    code, lines = validate(tmp_path, "include: " + "x" * 300 + "\n" + suite_text())
    assert code == 2 and len(lines) == 1 and "included file cannot be opened: xxxx" in lines[0], lines
    assert LINE.match(lines[0])["line"] == "1"
