"""Plugin discovery and isolation: broken entry points, allow/block lists, strict mode, lazy
registries, the wrapper hook, and `bench new-plugin` packages that install and run."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.errors import UnknownComponentError
from bench.hookspecs import REGISTER_HOOKS
from bench.registry import Registry

BENCH = [sys.executable, "-m", "bench.cli"]


def make_fake_distribution(root: Path, dist: str, ep_name: str, module: str, code: str | None) -> None:
    """A minimal installed distribution (dist-info with an entry point) importable from ``root``."""
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[bench]\n{ep_name} = {module}\n")
    if code is not None:
        (root / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def plugin_env(tmp_path):
    site = tmp_path / "site"
    make_fake_distribution(site, "broken_plugin", "broken", "broken_mod", "raise ImportError('needs libfoo')\n")
    make_fake_distribution(site, "crashy_plugin", "crashy", "crashy_mod", """
        from bench.hookspecs import hookimpl

        @hookimpl
        def bench_register_samplers(register):
            raise RuntimeError("registration exploded")
    """)
    make_fake_distribution(site, "good_plugin", "goodone", "good_mod", """
        from bench.hookspecs import hookimpl

        class Nothing:
            requires = frozenset()
            steps = 1
            def sample(self, family, rng):
                return rng.randn(2)

        @hookimpl
        def bench_register_samplers(register):
            register("nothing", "good_mod:Nothing")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    env.pop("BENCH_STRICT_PLUGINS", None)
    return env


def plugins_json(env):
    proc = subprocess.run(BENCH + ["plugins", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)}


def test_broken_plugins_are_isolated_and_reported(plugin_env, tmp_path):
    infos = plugins_json(plugin_env)
    assert infos["broken"]["status"] == "error" and "needs libfoo" in infos["broken"]["error"]
    assert infos["crashy"]["status"] == "error" and "registration exploded" in infos["crashy"]["error"]
    assert infos["goodone"]["status"] == "ok" and infos["goodone"]["components"] == {"sampler": ["nothing"]}
    assert infos["goodone"]["version"] == "0.3"
    assert infos["data"]["status"] == "ok"
    # every other command still works
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmatrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n")
    proc = subprocess.run(BENCH + ["validate", str(suite), "--plugins", "bench_testplug"], capture_output=True,
                          text=True, env=plugin_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the table form shows the one-line reason
    proc = subprocess.run(BENCH + ["plugins"], capture_output=True, text=True, env=plugin_env, timeout=120)
    assert "error: ImportError: needs libfoo" in proc.stdout.replace("\n", " ").replace("│", " ") or \
        "needs libfoo" in proc.stdout


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_env):
    env = dict(plugin_env, BENCH_STRICT_PLUGINS="1")
    proc = subprocess.run(BENCH + ["plugins"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "plugin 'broken' failed to load" in proc.stderr and "Traceback" not in proc.stderr


def test_allow_and_block_lists(plugin_env):
    infos = plugins_json(dict(plugin_env, BENCH_DISABLE_PLUGINS="broken,crashy"))
    assert infos["broken"]["status"] == "disabled" and infos["crashy"]["status"] == "disabled"
    infos = plugins_json(dict(plugin_env, BENCH_LOAD_PLUGINS="data,goodone"))
    assert infos["goodone"]["status"] == "ok" and infos["data"]["status"] == "ok"
    assert infos["nets"]["status"] == "disabled" and infos["broken"]["status"] == "disabled"


def test_registry_is_lazy_and_suggests_names():
    reg = Registry("sampler")
    reg.register("ddim", "no_such_module_anywhere:Thing")
    assert "ddim" in reg  # registering imported nothing
    with pytest.raises(ModuleNotFoundError):
        reg.entry("ddim").load()
    with pytest.raises(UnknownComponentError) as err:
        reg.entry("ddmi")
    assert err.value.suggestion == "ddim"


def test_wrapper_hook_can_alter_a_case_record(workdir):
    from typer.testing import CliRunner

    from bench.cli import app

    (workdir / "wrapmod.py").write_text(textwrap.dedent("""
        from bench.hookspecs import hookimpl

        @hookimpl(wrapper=True)
        def bench_run_case(case, context):
            record = yield
            record["metrics"]["wrapped"] = 42.0
            return record
    """))
    sys.path.insert(0, str(workdir))
    try:
        (workdir / "s.yaml").write_text("name: w\ndefaults: {train: {steps: 5}, eval: {num_samples: 10}}\n"
                                        "matrix: {dataset: [toy2d/moons], family: [fitgauss], sampler: [gauss]}\n")
        from bench.plugins import get_manager

        get_manager(("bench_testplug", "wrapmod"))
        result = CliRunner().invoke(app, ["run", "s.yaml", "-q", "--plugins", "bench_testplug", "--plugins", "wrapmod"])
        assert result.exit_code == 0, result.output
        record = json.loads(next(Path("results").glob("w/*/cases/*/record.json")).read_text())
        assert record["metrics"]["wrapped"] == 42.0
    finally:
        sys.path.remove(str(workdir))
        get_manager(("bench_testplug",), fresh=True)


def test_unknown_plugins_module_is_a_clear_error():
    proc = subprocess.run(BENCH + ["plugins", "--plugins", "no_such_plugin_mod"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "cannot import" in proc.stderr and "Traceback" not in proc.stderr


KINDS = sorted(REGISTER_HOOKS.values())


def scaffold(tmp_path: Path, name: str, kinds: list[str]) -> dict:
    """``bench new-plugin name --kind ...`` into tmp_path/name, made importable as an installed
    distribution (a dist-info with its entry point; what ``pip install -e`` leaves behind): the env."""
    pkg = tmp_path / name
    proc = subprocess.run(BENCH + ["new-plugin", name, *[a for k in kinds for a in ("--kind", k)], "--dir", str(pkg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (pkg / "pyproject.toml").read_text().count("[project.entry-points.bench]") == 1
    make_fake_distribution(tmp_path / "site", name, name, f"{name}.plugin", None)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(pkg),
                                                       os.environ.get("PYTHONPATH", "")]))


def test_new_plugin_examples_of_every_kind_conform_in_process(tmp_path):
    """The fast check of the templates: one package with every kind, loaded with --plugins (in process),
    each example built with its defaults on a probe dataset and checked against its protocol."""
    from bench.plugins import get_manager
    from bench.scaffold import write_plugin
    from bench.testing import check_component

    write_plugin("inproc", KINDS, tmp_path / "inproc")
    sys.path.insert(0, str(tmp_path / "inproc"))
    try:
        regs = get_manager(("inproc.plugin",), fresh=True).registries
        for kind in KINDS:
            result = check_component(regs, kind, "inproc_example", str(tmp_path / "store"))
            assert result.problems == [] and result.skipped is None, (kind, result)
    finally:
        sys.path.remove(str(tmp_path / "inproc"))
        get_manager(("bench_testplug",), fresh=True)


@pytest.mark.slow
def test_new_plugin_writes_one_package_whose_every_kind_passes_its_tests_and_the_check(tmp_path):
    """All kinds in ONE package: one module and one test per kind, one plugin module registering them;
    the generated tests pass against the installed entry point, and so does `bench plugins --check`."""
    env = scaffold(tmp_path, "allkinds", KINDS)
    pkg = tmp_path / "allkinds"
    assert sorted(p.stem for p in (pkg / "allkinds").glob("*.py")) == sorted(KINDS + ["__init__", "plugin"])
    assert (pkg / "allkinds" / "plugin.py").read_text().count("@hookimpl") == len(KINDS)
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
                           str(pkg / "tests")], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr
    assert f"{len(KINDS) + 2} passed" in test.stdout  # the family template has three tests
    check = subprocess.run(BENCH + ["plugins", "--check", *[a for k in KINDS if k != "dataset" for a in ("--kind", k)]],
                           capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 problem(s)" in check.stdout
    for kind in KINDS:  # each example was built and checked (not skipped)
        assert f"not built: {kind} 'allkinds_example'" not in check.stdout


@pytest.mark.slow
def test_scaffolded_family_sampler_noise_and_metric_run_beside_the_built_ins(tmp_path):
    """The family template (flow matching) with the noise template, sampled by `euler`, measured by
    `nll`, `fid` (digits8 in the random-proj space) and the metric template; the sampler template on
    the exact-score oracle. Every case ends ok and the template's metric is logged."""
    env = scaffold(tmp_path, "mine", ["family", "sampler", "noise", "metric"])
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        name: scaffolded
        defaults: {train: {steps: 10, batch_size: 32}, eval: {num_samples: 64, grid: 0}}
        matrix:
          dataset:
            - {name: gaussian, dim: 2}
            - {name: digits8, metric_params: {fid: {extractor: random-proj}}}
          family: [{name: mine_example, noise: mine_example, likelihood_steps: 5}, oracle_vp]
          sampler: [{name: euler, steps: 5}, {name: mine_example, steps: 10}]
        exclude: [{dataset: digits8, family: oracle_vp}]
        metrics: [{name: nll, num_samples: 32}, fid, mine_example]
    """))
    proc = subprocess.run(BENCH + ["run", "s.yaml", "-q", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in tmp_path.glob("results/scaffolded/*/cases/*/record.json")]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    by_id = {r["case_id"]: r["metrics"] for r in records}
    fm_digits = by_id["scaffolded/digits8/mine_example[likelihood_steps=5,noise=mine_example]/euler[steps=5]/seed=0"]
    assert "fid" in fm_digits and "nll" in fm_digits and "mean_gap" in fm_digits
    oracle = by_id["scaffolded/gaussian[dim=2]/oracle_vp/mine_example[steps=10]/seed=0"]
    assert oracle["mean_gap"] < 0.5


def test_installed_plugin_component_runs_in_a_suite(tmp_path):
    """A stranger's dataset plugin, installed, used by name in a suite run end to end."""
    pkg = tmp_path / "pkg"
    subprocess.run(BENCH + ["new-plugin", "ringdata", "--kind", "dataset", "--dir", str(pkg)], check=True,
                   capture_output=True, timeout=120)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "s.yaml").write_text(
        "name: ext\ndefaults: {train: {steps: 30, lr: 0.05}, eval: {num_samples: 50}}\n"
        "matrix: {dataset: [{name: ringdata_example, radius: 3.0}], family: [fitgauss], sampler: [gauss]}\n"
        "metrics: [mean_err]\n")
    proc = subprocess.run(BENCH + ["run", "s.yaml", "-q", "--plugins", "bench_testplug"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ext/ringdata_example[radius=3]/fitgauss/gauss/seed=0" in proc.stdout


def test_new_plugin_rejects_bad_input(tmp_path):
    proc = subprocess.run(BENCH + ["new-plugin", "Bad-Name", "--kind", "sampler", "--dir", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "identifier" in proc.stderr
    proc = subprocess.run(BENCH + ["new-plugin", "ok_name", "--kind", "samplr", "--dir", str(tmp_path / "y")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown kind" in proc.stderr


def test_the_sampler_template_ships_with_bench_diffusion(tmp_path):
    """The core holds no diffusion code: its templates cover every kind but the sampler, whose template
    (written against the VP families) bench_diffusion provides through a hook."""
    from bench.scaffold import CORE_TEMPLATES, read_templates

    assert set(read_templates(CORE_TEMPLATES)) == set(KINDS) - {"sampler"}
    env = dict(os.environ, BENCH_DISABLE_PLUGINS="diffusion")
    proc = subprocess.run(BENCH + ["new-plugin", "my_s", "--kind", "sampler", "--dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "no loaded plugin provides a 'sampler' template" in proc.stderr
    assert "Traceback" not in proc.stderr
