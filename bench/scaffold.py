"""``bench new-plugin NAME --kind KIND``: an installable plugin package with a working example.

The package has a ``pyproject.toml`` declaring the ``bench`` entry point, a plugin module that
registers one example component of the requested kind, the component itself, and a test that
builds it through bench's registries (so it checks the installed entry point, not just the class).

The templates are files: the core's under ``bench/templates/`` (package data), and those that need a
plugin's interface with that plugin, found through the ``bench_new_plugin_templates`` hook (the
sampler template, written against the VP families, ships with bench_diffusion). A template directory
holds ``kinds.json`` (kind -> example class and registration meta), ``<kind>.py.tmpl`` and
``test_<kind>.py.tmpl``; ``$name``, ``$component`` and the other fields of :func:`write_plugin` are
substituted with :class:`string.Template`.
"""
from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .errors import UserError, did_you_mean
from .hookspecs import REGISTER_HOOKS

CORE_TEMPLATES = Path(__file__).with_name("templates")
HOOKS = {kind: hook for hook, kind in REGISTER_HOOKS.items()}


@dataclass
class KindTemplate:
    """The example of one kind: its class, registration meta, module and test templates."""

    cls: str
    meta: dict
    module: str
    test: str

    def register_args(self) -> str:
        """The registration's extra arguments, e.g. ``, requires=["vp"]``."""
        return "".join(f", {key}={json.dumps(value)}" for key, value in self.meta.items())


def read_templates(directory: Path) -> dict[str, KindTemplate]:
    """The kinds a template directory provides (see the module docstring)."""
    directory = Path(directory)
    kinds = json.loads((directory / "kinds.json").read_text())
    return {kind: KindTemplate(spec["class"], spec.get("meta", {}), (directory / f"{kind}.py.tmpl").read_text(),
                               (directory / f"test_{kind}.py.tmpl").read_text())
            for kind, spec in kinds.items()}


def templates() -> dict[str, KindTemplate]:
    """The core's templates, then those the loaded plugins provide (a plugin's wins for its kind)."""
    from .plugins import get_manager

    out = read_templates(CORE_TEMPLATES)
    for directory in get_manager().hook.bench_new_plugin_templates():
        if directory is not None:
            out.update({k: v for k, v in read_templates(Path(directory)).items() if k in HOOKS})
    return out


def write_plugin(name: str, kind: str, directory: Path | None = None) -> Path:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"plugin name '{name}' must be a lowercase Python identifier, e.g. my_sampler")
    available = templates()
    if kind not in available:
        close = did_you_mean(kind, HOOKS)
        hint = f"did you mean '{close}'?" if close else f"kinds: {', '.join(sorted(available))}"
        if kind in HOOKS:
            hint = f"no loaded plugin provides a '{kind}' template (bench_diffusion does for 'sampler')"
        raise UserError(f"unknown kind '{kind}'", hint=hint)
    root = Path(directory or name)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty")
    template = available[kind]
    component = f"{name}_example"
    subs = {"name": name, "dist": name.replace("_", "-"), "kind": kind, "component": component,
            "cls": template.cls, "meta": template.register_args(), "hook": HOOKS[kind]}

    def core(file: str) -> str:
        return Template((CORE_TEMPLATES / file).read_text()).substitute(subs)

    pkg = root / name
    (root / "tests").mkdir(parents=True, exist_ok=True)
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(core("pyproject.toml.tmpl"))
    (pkg / "__init__.py").write_text(f'"""bench plugin {name}."""\n')
    (pkg / "plugin.py").write_text(core("plugin.py.tmpl"))
    (pkg / "component.py").write_text(template.module)
    (root / "tests" / "conftest.py").write_text(core("conftest.py.tmpl"))
    (root / "tests" / f"test_{name}.py").write_text(Template(template.test).substitute(subs))
    (root / "README.md").write_text(
        f"# {name}\n\nA bench plugin providing the {kind} `{component}`.\n\n"
        f"```\npip install -e .\nbench plugins        # shows {name}\npytest tests\n```\n\n"
        f"Use it in a suite by name: `{component}`.\n")
    return root
