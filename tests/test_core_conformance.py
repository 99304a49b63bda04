"""Protocol conformance (bench.protocols, bench.testing, `bench plugins --check`, `bench validate`), the
public metric feature API (MetricContext.features / labels) and per-dataset metric parameters."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bench.errors import SuiteError, UserError
from bench.plugins import get_manager
from bench.protocols import PROTOCOLS, DataInfo, members
from bench.suite import load_suite
from bench.testing import assert_conforms, check_registries, conformance_problems

BENCH = [sys.executable, "-m", "bench.cli"]


class SixMethodNoise:
    """The noise template before the protocol was completed: no log_prob, no describe."""

    shape = (2,)

    def sample(self, rng):
        return rng.randn(2)

    def sqrt(self, z):
        return z

    def inv_sqrt(self, x):
        return x

    def cov(self, x):
        return x

    def inv_cov(self, x):
        return x

    def logdet(self):
        return 0.0


def test_protocols_list_what_the_built_in_families_call():
    noise = {m.name: m for m in members(PROTOCOLS["noise"])}
    assert not noise["log_prob"].optional and noise["log_prob"].arity == 2  # processes pass (x, scale2)
    assert not noise["describe"].optional  # every diffusion process logs it
    assert noise["quad"].optional and noise["variances"].optional  # the VLB only
    family = {m.name for m in members(PROTOCOLS["family"]) if not m.optional}
    assert {"loss", "nfe_modules", "state_dict", "load_state_dict", "parameters", "train", "eval"} <= family


def test_conformance_names_every_missing_member_and_bad_arity():
    problems = conformance_problems(SixMethodNoise(), "noise")
    assert len(problems) == 2
    assert any("'log_prob'" in p for p in problems) and any("'describe'" in p for p in problems)

    class OneArgSampler:
        steps = 10

        def sample(self, family):
            return family

    (line,) = conformance_problems(OneArgSampler(), "sampler")
    assert "sample" in line and "2 positional arguments" in line
    with pytest.raises(AssertionError, match="log_prob"):
        assert_conforms(SixMethodNoise(), "noise")


def test_built_in_noise_schedules_families_and_metrics_conform():
    results = check_registries(get_manager().registries, ["noise", "schedule", "family", "metric"])
    assert [p for r in results for p in r.problems] == []
    built = {r.name for r in results if r.skipped is None}
    assert {"isotropic", "gff", "linear", "geometric", "ddpm", "oracle_vp", "flow_matching", "fid", "nll"} <= built


@pytest.mark.slow
def test_every_built_in_component_conforms():  # about 25 s: the samplers import their peer libraries
    results = check_registries(get_manager().registries)
    assert [p for r in results for p in r.problems] == []


BAD_PLUGIN = """
    from bench.hookspecs import hookimpl

    class SixMethodNoise:
        def __init__(self, context=None):
            self.shape = tuple(context.data.shape)
        def sample(self, rng): return rng.randn(*self.shape)
        def sqrt(self, z): return z
        def inv_sqrt(self, x): return x
        def cov(self, x): return x
        def inv_cov(self, x): return x
        def logdet(self): return 0.0

    @hookimpl
    def bench_register_noise_models(register):
        register("sixnoise", SixMethodNoise)
"""


@pytest.fixture
def bad_plugin(tmp_path):
    (tmp_path / "sixplug.py").write_text(textwrap.dedent(BAD_PLUGIN))
    (tmp_path / "s.yaml").write_text("name: six\nmatrix:\n  dataset: [toy2d/moons]\n"
                                     "  family: [{name: ddpm, noise: sixnoise, T: 10}]\n  sampler: [ddim]\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_validate_rejects_a_component_that_misses_protocol_members(bad_plugin, tmp_path):
    proc = subprocess.run(BENCH + ["validate", "s.yaml", "--plugins", "sixplug"], capture_output=True, text=True,
                          env=bad_plugin, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "noise 'sixnoise' (plugin 'sixplug'" in proc.stderr
    assert "missing method 'log_prob'" in proc.stderr and "missing method 'describe'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugins_check_reports_one_line_per_problem(bad_plugin, tmp_path):
    proc = subprocess.run(BENCH + ["plugins", "--check", "--kind", "noise", "--plugins", "sixplug"],
                          capture_output=True, text=True, env=bad_plugin, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("problem:")]
    assert len(lines) == 2 and all("sixnoise" in ln for ln in lines)
    assert "2 problem(s)" in proc.stdout


# ------------------------------------------------------------------------------ per-dataset metric params
SUITE = """\
name: mp
matrix:
  dataset:
    - digits8
    - {name: gaussian_image, size: 8, id: g8, metric_params: {fid: {extractor: random-proj, batch_size: 32}}}
  family: [ddpm]
  sampler: [ddim]
metrics: [fid, swd]
"""


def test_metric_params_override_a_metric_on_one_dataset(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite = load_suite(path, get_manager().registries)
    by_data = {c.labels()["dataset"]: {m["name"]: m for m in c.metrics} for c in suite.cases}
    assert by_data["g8"]["fid"]["extractor"]["name"] == "random-proj" and by_data["g8"]["fid"]["batch_size"] == 32
    assert by_data["digits8"]["fid"]["extractor"]["name"] == "auto" and by_data["digits8"]["fid"]["batch_size"] == 64
    assert by_data["g8"]["fid"]["id"] == by_data["digits8"]["fid"]["id"] == "fid"  # the same column
    assert by_data["g8"]["swd"] == by_data["digits8"]["swd"]
    # the dataset itself is unchanged (metric_params is not a dataset parameter)
    case = next(c for c in suite.cases if c.labels()["dataset"] == "g8")
    assert "metric_params" not in case.dataset


@pytest.mark.parametrize("entry, message", [
    ("{fdi: {extractor: random-proj}}", "'fdi' is not a metric of this suite"),
    ("{fid: {extractr: random-proj}}", "unknown key 'extractr'"),
    ("[fid]", "must map metric names"),
])
def test_bad_metric_params_are_located_errors(tmp_path, entry, message):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("{fid: {extractor: random-proj, batch_size: 32}}", entry))
    with pytest.raises(SuiteError) as err:
        load_suite(path, get_manager().registries)
    assert message in str(err.value) and "s.yaml:5" in str(err.value)
    if "fdi" in entry:
        assert "did you mean 'fid'" in str(err.value)


def test_auto_refuses_small_unlabelled_images_with_a_pointer_to_metric_params():
    from bench_metrics.testing import build_context

    class Small:
        info = DataInfo("gauss8", (1, 8, 8), "image", levels=None, value_range=(-1.0, 1.0))

    regs = get_manager().registries
    with pytest.raises(UserError) as err:
        regs.feature_extractor.create({"name": "auto"}, context=build_context(Small(), "/tmp/unused-store"))
    assert "no feature space for gauss8" in str(err.value) and "metric_params" in err.value.hint


# ------------------------------------------------------------------------------ the metric feature API
class TwoClassImages:
    """8x8 grey images whose pixels all equal -0.5 (label 0) or 0.5 (label 1): equal features <=> equal labels."""

    def __init__(self, n=60):
        self.info = DataInfo("two-class", (1, 8, 8), "image", levels=17, value_range=(-1.0, 1.0),
                             params={"num_classes": 2})
        g = torch.Generator().manual_seed(1)
        self._labels = {s: torch.randint(0, 2, (n,), generator=g) for s in ("train", "test")}

    def split(self, name):
        return (self._labels[name].float() - 0.5).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()

    def labels(self, name):
        return self._labels[name]


def test_features_are_fids_features_and_labels_are_row_aligned(tmp_path):
    from bench_metrics.fidelity import FID, fid_from_features
    from bench_metrics.testing import metric_context

    data = TwoClassImages()
    samples = data.split("train")[:40] + 0.1
    ctx = metric_context(data, samples, store=tmp_path / "store")
    gen, ref, floor = (ctx.features("random-proj", which) for which in ("generated", "reference", "floor"))
    assert gen.shape[0] == 40 and ref.shape[0] == 60 and floor.shape[0] == 40
    fid = FID(extractor="random-proj", context=ctx.build_context).compute(ctx)
    assert fid["fid"] == pytest.approx(fid_from_features(gen, ref), rel=1e-9)
    assert fid["fid_floor"] == pytest.approx(fid_from_features(floor, ref), rel=1e-9)
    assert ctx.feature_set("random-proj", "reference").cached  # fid found them in the store
    for which, feats in (("reference", ref), ("floor", floor)):
        labels = ctx.labels(which, "random-proj")
        same_features = torch.cdist(feats.double(), feats.double()) < 1e-6
        assert torch.equal(same_features, labels[:, None] == labels[None, :])
    assert ctx.labels("generated", "random-proj") is None
    with pytest.raises(ValueError, match="which must be one of"):
        ctx.features("random-proj", "test")


@pytest.mark.slow
def test_a_failing_describe_is_a_warning_line_on_the_console(tmp_path):  # a full run with MLflow: ~25 s
    (tmp_path / "descplug.py").write_text(textwrap.dedent("""
        from bench.hookspecs import hookimpl

        class Prior:
            steps = 1
            def sample(self, family, rng):
                return family.process.prior_sample(rng)
            def describe(self):
                raise KeyError("no such level")

        @hookimpl
        def bench_register_samplers(register):
            register("prior_only", Prior)
    """))
    (tmp_path / "s.yaml").write_text("name: desc\ndefaults: {eval: {num_samples: 8, grid: 0}}\n"
                                     "matrix: {dataset: [{name: gaussian, dim: 2}], family: [oracle_vp], "
                                     "sampler: [prior_only]}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(BENCH + ["run", "s.yaml", "-q", "--plugins", "descplug", "--tracking-uri",
                                   f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: sampler.describe() failed (KeyError: 'no such level')" in proc.stdout
