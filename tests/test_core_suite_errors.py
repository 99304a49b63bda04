"""Every malformed suite gives one clear line with file:line, exit code 2 and no traceback."""
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from bench.cli import app

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

# (name, suite text, expected words in the message, expected line or None)
CASES = [
    ("syntax", "name: x\nmatrix: [unclosed\n", "invalid YAML", 3),
    ("unknown_key", GOOD.replace("defaults:", "defualts:"), "unknown key 'defualts'", 2),
    ("unknown_key_did_you_mean", GOOD.replace("defaults:", "defualts:"), "did you mean 'defaults'", 2),
    ("unknown_component", GOOD.replace("[gauss]", "[gaus]"), "unknown sampler 'gaus'", 7),
    ("unknown_component_hint", GOOD.replace("[gauss]", "[gaus]"), "did you mean 'gauss'", 7),
    ("unknown_dataset", GOOD.replace("toy2d/moons", "toy2d/mons"), "did you mean 'toy2d/moons'", 5),
    ("wrong_type", GOOD.replace("steps: 5", "steps: many"), "train.steps", 3),
    ("out_of_range", GOOD.replace("steps: 5", "steps: -3"), "greater than or equal to 0", 3),
    ("component_param_type", GOOD.replace("[gauss]", "[{name: gauss, steps: lots}]"), "steps", 7),
    ("component_param_unknown", GOOD.replace("[gauss]", "[{name: gauss, stepz: 3}]"), "unknown key 'stepz'", 7),
    ("empty", "", "empty", 1),
    ("not_a_mapping", "- a\n- b\n", "must be a mapping", 1),
    ("missing_include", "include: nothere.yaml\n" + GOOD, "included file not found", 1),
    ("python_tag", GOOD.replace("name: ok", "name: !!python/object/apply:os.system ['echo hi']"),
     "not allowed", 1),
    ("missing_data_path", GOOD.replace("[toy2d/moons]", "[{name: image_folder, root: /no/such/dir}]"),
     "root", 5),
    ("missing_required", "name: x\n", "missing required key 'matrix'", 1),
    ("duplicate_key", GOOD + "metrics: [mean_err]\n", "duplicate key", 9),
    ("bad_name", GOOD.replace("name: ok", "name: 'has space'"), "name", 1),
    ("exclude_key", GOOD + "exclude: [{famly: fitgauss}]\n", "exclude rules match", 9),
]


@pytest.mark.parametrize("name,text,words,line", CASES, ids=[c[0] for c in CASES])
def test_malformed_suite_gives_one_clear_line(tmp_path, name, text, words, line):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"])
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert words in out
    assert str(path) in out
    if line is not None:
        assert f"{path}:{line}:" in out


def test_include_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n" + GOOD)
    (tmp_path / "b.yaml").write_text("include: a.yaml\nname: b\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "a.yaml"), "--plugins", "bench_testplug"])
    assert result.exit_code == 2
    assert "include cycle" in result.output and "a.yaml -> b.yaml -> a.yaml" in result.output


def test_missing_suite_file(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "file not found" in result.output


def test_binary_garbage(tmp_path):
    path = tmp_path / "junk.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "UTF-8" in result.output


def test_bad_set_override(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD)
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(path), "--plugins", "bench_testplug", "--set", "train.steps=-1"])
    assert result.exit_code == 2 and "--set" in result.output
    result = runner.invoke(app, ["validate", str(path), "--plugins", "bench_testplug", "--set", "nonsense"])
    assert result.exit_code == 2 and "key=value" in result.output


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """The installed console script, not just the in-process runner."""
    path = tmp_path / "suite.yaml"
    path.write_text(GOOD.replace("[gauss]", "[gaus]"))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "validate", str(path), "--plugins", "bench_testplug"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip() == f"{path}:7:13: error: unknown sampler 'gaus' (did you mean 'gauss'?)"


def test_good_suite_validates(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(GOOD))
    result = CliRunner().invoke(app, ["validate", str(path), "--plugins", "bench_testplug"])
    assert result.exit_code == 0, result.output
    assert "1 case(s)" in result.output
