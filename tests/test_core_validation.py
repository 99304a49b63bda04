"""Validation reports every problem of a suite in one run, suggests keys as it suggests names, names the
broken plugin behind an unknown component, and never silently drops an ``include_cases`` setting."""
import re
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import SuiteError, SuiteErrors, UserError
from bench.plugins import PluginManager
from bench.suite import load_suite

LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")

GOOD = """\
name: ok
defaults:
  train: {steps: 5}
matrix:
  dataset: [toy2d/moons]
  family: [fitgauss]
  sampler: [gauss]
metrics: [mean_err]
"""


def _validate(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    result = CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"])
    return path, result.exit_code, result.output.strip().splitlines()


def test_five_problems_give_five_located_lines(tmp_path):
    path, code, lines = _validate(tmp_path, """\
        name: ok
        defaults:
          train: {steps: -1}
        matrix:
          dataset: [toy2d/mons]
          family: [fitgauss]
          sampler: [gaus]
        metrics: [mean_er]
        exclude: [{famly: fitgauss}]
        """)
    assert code == 2, lines
    assert len(lines) == 5, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["line"]) for m in parsed] == [3, 5, 7, 8, 9]  # in file order
    assert all(m["file"] == str(path) for m in parsed)
    words = ["greater than or equal to 0", "unknown dataset 'toy2d/mons'", "unknown sampler 'gaus'",
             "unknown metric 'mean_er'", "not 'famly'"]
    for line, word in zip(lines, words):
        assert word in line


def test_the_same_problem_is_reported_once(tmp_path):
    # the bad override belongs to one family entry, met by each of the 3 seeds' cases
    _, code, lines = _validate(tmp_path, GOOD.replace("family: [fitgauss]",
                                                      "family: [{name: fitgauss, train: {steps: -1}}]\n  seed: [0, 1, 2]"))
    assert code == 2 and len(lines) == 1, lines
    assert "matrix.family.0.train.steps" in lines[0]


@pytest.mark.parametrize("old,new,where,suggestion", [
    ("defaults:", "defualts:", "suite", "defaults"),
    ("train: {steps: 5}", "train: {stepz: 5}", "defaults.train", "steps"),
    ("train: {steps: 5}", "train: {steps: 5}\n  eval: {num_sample: 5}", "defaults.eval", "num_samples"),
    ("[fitgauss]", "[{name: fitgauss, train: {stepz: 3}}]", "matrix.family.0.train", "steps"),
    ("[gauss]", "[{name: gauss, stepz: 3}]", "matrix.sampler.0", "steps"),
    ("metrics: [mean_err]", "metrics: [mean_err]\ninclude_cases: [{dataset: toy2d/moons, family: fitgauss, sed: 1}]",
     "include_cases.0", "seed"),
])
def test_misspelled_keys_get_did_you_mean_at_every_level(tmp_path, old, new, where, suggestion):
    path, code, lines = _validate(tmp_path, GOOD.replace(old, new))
    assert code == 2 and len(lines) == 1, lines
    assert LINE.match(lines[0]), lines
    assert f"in {where} (did you mean '{suggestion}'?)" in lines[0]


def test_misspelled_keys_all_reported_with_suggestions(tmp_path):
    _, code, lines = _validate(tmp_path, GOOD.replace("train: {steps: 5}", "train: {stepz: 5}\n  eval: {grd: 4}")
                               .replace("[gauss]", "[{name: gauss, stepz: 3}]"))
    assert code == 2 and len(lines) == 3, lines
    assert ["steps", "grid", "steps"] == [re.search(r"did you mean '(\w+)'", line)[1] for line in lines]


def test_syntax_error_stops_at_the_first(tmp_path):
    _, code, lines = _validate(tmp_path, "name: [x\nmatrix: {dataset: [a\n")
    assert code == 2 and len(lines) == 1 and "invalid YAML" in lines[0], lines


# ----------------------------------------------------------------------------- include_cases

INCLUDED = GOOD + "include_cases:\n  - {dataset: toy2d/moons, family: fitgauss, sampler: gauss, seed: 7%s}\n"


def test_include_cases_metrics_is_rejected_not_ignored(tmp_path):
    path, code, lines = _validate(tmp_path, INCLUDED % ", metrics: [mean_err]")
    assert code == 2 and len(lines) == 1, lines
    assert f"{path}:10:" in lines[0]
    assert "include_cases entries cannot set 'metrics'" in lines[0]


def test_include_cases_train_overrides_are_honoured(tmp_path, manager):
    path = tmp_path / "suite.yaml"
    path.write_text(INCLUDED % ", train: {steps: 3}, eval: {num_samples: 11}"
                    + "  - {dataset: toy2d/moons, family: {name: fitgauss, train: {steps: 4}}, seed: 8}\n")
    suite = load_suite(path, manager.registries, manager.versions())
    by_seed = {c.seed: c for c in suite.cases}
    assert by_seed[0].train["steps"] == 5
    assert by_seed[7].train["steps"] == 3 and by_seed[7].eval["num_samples"] == 11
    assert by_seed[8].train["steps"] == 4


# ----------------------------------------------------------------------------- broken plugins

BROKEN = """\
raise ImportError("No module named 'scipy_blur'")

from bench.hookspecs import hookimpl


@hookimpl
def bench_register_noise_models(register):
    register("blur", "my_blur_plugin.noise:Blur")
"""

BLUR_SUITE = GOOD.replace("[fitgauss]", "[{name: ddpm, noise: blur}]").replace("[gauss]", "[ddim]")


def _manager_with_entry_point(tmp_path, monkeypatch, name, source):
    """A fresh plugin manager that discovers ``source`` as the entry point ``name`` of a tmp distribution."""
    site = tmp_path / "site"
    (site / f"{name}-0.1.dist-info").mkdir(parents=True)
    (site / f"{name}-0.1.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (site / f"{name}-0.1.dist-info" / "entry_points.txt").write_text(f"[bench]\n{name} = {name}\n")
    (site / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("BENCH_STRICT_PLUGINS", raising=False)
    manager = PluginManager()
    manager.load_entry_points()
    manager.load_module("bench_testplug")
    return manager


def test_unknown_component_names_the_broken_plugin_that_provides_it(tmp_path, monkeypatch):
    manager = _manager_with_entry_point(tmp_path, monkeypatch, "my_blur_plugin", BROKEN)
    assert manager.infos["my_blur_plugin"].status == "error"
    path = tmp_path / "suite.yaml"
    path.write_text(BLUR_SUITE)
    with pytest.raises(UserError) as err:
        load_suite(path, manager.registries, manager.versions())
    line = str(err.value)
    assert line.startswith(f"{path}:6:")
    assert "unknown noise 'blur' (plugin 'my_blur_plugin' failed to load: ImportError: No module named 'scipy_blur'" \
        in line


def test_unknown_component_lists_failed_plugins_when_none_names_it(tmp_path, monkeypatch):
    manager = _manager_with_entry_point(tmp_path, monkeypatch, "other_plugin", BROKEN.replace("blur", "fog"))
    path = tmp_path / "suite.yaml"
    path.write_text(BLUR_SUITE)
    with pytest.raises(UserError) as err:
        load_suite(path, manager.registries, manager.versions())
    assert "unknown noise 'blur' (plugins that failed to load: 'other_plugin' (ImportError: " in str(err.value)


def test_plugin_whose_registration_fails_is_named(tmp_path, monkeypatch):
    """``--plugins`` with a module that imports but fails while registering (a lazy import)."""
    (tmp_path / "lazy_blur.py").write_text(textwrap.dedent("""\
        from bench.hookspecs import hookimpl


        @hookimpl
        def bench_register_noise_models(register):
            import no_such_blur_backend  # noqa: F401
            register("blur", "lazy_blur:Blur")
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("BENCH_STRICT_PLUGINS", raising=False)
    manager = PluginManager()
    manager.load_entry_points()
    manager.load_module("bench_testplug")
    manager.load_module("lazy_blur")
    path = tmp_path / "suite.yaml"
    path.write_text(BLUR_SUITE)
    with pytest.raises(UserError) as err:
        load_suite(path, manager.registries, manager.versions())
    assert "(plugin 'lazy_blur' failed to load: ModuleNotFoundError: No module named 'no_such_blur_backend'" \
        in str(err.value)
    sys.modules.pop("lazy_blur", None)


def test_errors_bundle_prints_one_line_each():
    errs = SuiteErrors([SuiteError("a"), SuiteError("b", hint="c")])
    assert str(errs).splitlines() == ["error: a", "error: b (c)"]
