"""docs/plugins.md runs: its fenced bash, python and yaml blocks are executed in order in an empty
directory. A python or yaml block whose first line is ``# file: PATH`` is written to PATH; other python
blocks run with this interpreter; bash blocks run with ``bash -euo pipefail``. ``pip install -e DIR``
is the one substitution: a ``pip`` shim first on PATH writes what an editable install leaves behind
(a dist-info with DIR's ``bench`` entry point, in a site directory on PYTHONPATH, with DIR itself on
PYTHONPATH), so the test does not touch the environment it runs in."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
RUN = ("bash", "python", "yaml")

PIP_SHIM = """#!{python}
import sys, tomllib
from pathlib import Path
args = sys.argv[1:]
assert args[:2] == ["install", "-e"] and len(args) == 3, f"the tutorial test's pip shim only does 'install -e DIR': {{args}}"
root = Path(args[2]).resolve()
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
info = Path({site!r}) / f"{{project['name']}}-{{project['version']}}.dist-info"
info.mkdir(parents=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {{project['name']}}\\nVersion: {{project['version']}}\\n")
eps = project["entry-points"]["bench"]
(info / "entry_points.txt").write_text("[bench]\\n" + "".join(f"{{k}} = {{v}}\\n" for k, v in eps.items()))
"""


def blocks(text: str) -> list[tuple[str, str]]:
    """The runnable fenced blocks of a markdown text, in order: (language, body)."""
    return [(lang, body) for lang, body in FENCE.findall(text) if lang in RUN]


def test_the_block_parser_sees_the_tutorial():
    found = blocks(DOC.read_text())
    langs = [lang for lang, _ in found]
    assert langs.count("bash") >= 4 and langs.count("python") >= 7 and langs.count("yaml") == 1
    files = [body.splitlines()[0] for lang, body in found if body.startswith("# file: ")]
    assert "# file: mybench/mybench/sampler.py" in files and "# file: tutorial.yaml" in files


@pytest.mark.slow
def test_the_plugin_tutorial_runs_end_to_end(tmp_path):
    site, bin_dir, work = tmp_path / "site", tmp_path / "bin", tmp_path / "work"
    for d in (site, bin_dir, work):
        d.mkdir()
    shim = bin_dir / "pip"
    shim.write_text(PIP_SHIM.format(python=sys.executable, site=str(site)))
    shim.chmod(0o755)
    for name, command in (("python", sys.executable), ("bench", f"{sys.executable} -m bench.cli")):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command} \"$@\"\n")  # this interpreter, its venv
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
               PYTHONPATH=os.pathsep.join([str(site), str(work / "mybench"), os.environ.get("PYTHONPATH", "")]))
    env.pop("BENCH_STRICT_PLUGINS", None)
    outputs = []
    for i, (lang, body) in enumerate(blocks(DOC.read_text())):
        first = body.splitlines()[0]
        if first.startswith("# file: "):
            path = work / first[len("# file: "):].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        assert lang != "yaml", f"block {i}: a yaml block needs a '# file:' line"
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        outputs.append(proc.stdout)
        assert proc.returncode == 0, f"block {i} ({lang}) failed:\n{body}\n{proc.stdout}\n{proc.stderr}"
    text = "\n".join(outputs)
    assert "3 passed" in text  # the package's own tests
    assert "0 problem(s)" in text  # bench plugins --check
    assert "tutorial.yaml: ok (6 case(s)" in text
    assert "my_dpmpp_2m" in text and "coverage" in text  # the compare tables
