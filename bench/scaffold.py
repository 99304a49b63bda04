"""``bench new-plugin NAME --kind KIND [--kind KIND ...]``: an installable plugin package with working examples.

The package has a ``pyproject.toml`` declaring the ``bench`` entry point, a plugin module that
registers one example component of each requested kind, the components (``<kind>.py``), and one test
per kind that builds the component through bench's registries (so it checks the installed entry
point, not just the class) and checks its protocol (:func:`bench.testing.assert_conforms`).

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


HOOK_TEMPLATE = """

@hookimpl
def $hook(register):
    register("$component", "$name.$module:$cls"$meta)
"""


def _kinds(kinds: str | list[str], available: dict[str, KindTemplate]) -> list[str]:
    """The requested kinds, in order, without repeats; an unknown one is a UserError with a hint."""
    out = []
    for kind in [kinds] if isinstance(kinds, str) else list(kinds):
        if kind not in available:
            close = did_you_mean(kind, HOOKS)
            hint = f"did you mean '{close}'?" if close else f"kinds: {', '.join(sorted(available))}"
            if kind in HOOKS:
                hint = f"no loaded plugin provides a '{kind}' template (bench_diffusion does for 'sampler')"
            raise UserError(f"unknown kind '{kind}'", hint=hint)
        if kind not in out:
            out.append(kind)
    if not out:
        raise UserError("name at least one --kind")
    return out


def write_plugin(name: str, kinds: str | list[str], directory: Path | None = None) -> Path:
    """Write the package ``name`` with one example component per kind of ``kinds``: module
    ``<name>/<kind>.py``, registered as ``<name>_example`` by ``<name>/plugin.py``, tested by
    ``tests/test_<kind>.py`` (each test also checks the component's protocol)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"plugin name '{name}' must be a lowercase Python identifier, e.g. my_sampler")
    available = templates()
    kinds = _kinds(kinds, available)
    root = Path(directory or name)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty")
    component = f"{name}_example"
    subs = {"name": name, "dist": name.replace("_", "-"), "component": component,
            "kind": " and ".join(kinds), "kinds": ", ".join(kinds)}

    def core(file: str, **extra: str) -> str:
        return Template((CORE_TEMPLATES / file).read_text()).substitute(subs, **extra)

    pkg = root / name
    (root / "tests").mkdir(parents=True, exist_ok=True)
    pkg.mkdir(parents=True, exist_ok=True)
    hooks = ""
    for kind in kinds:
        template = available[kind]
        each = {**subs, "kind": kind, "module": kind, "cls": template.cls, "meta": template.register_args(),
                "hook": HOOKS[kind]}
        hooks += Template(HOOK_TEMPLATE).substitute(each)
        (pkg / f"{kind}.py").write_text(template.module)
        (root / "tests" / f"test_{kind}.py").write_text(Template(template.test).substitute(each))
    (root / "pyproject.toml").write_text(core("pyproject.toml.tmpl"))
    (pkg / "__init__.py").write_text(f'"""bench plugin {name}."""\n')
    (pkg / "plugin.py").write_text(core("plugin.py.tmpl", hooks=hooks))
    (root / "tests" / "conftest.py").write_text(core("conftest.py.tmpl"))
    (root / "README.md").write_text(
        f"# {name}\n\nA bench plugin providing `{component}` as a {' and a '.join(kinds)}.\n\n"
        f"```\npip install -e .\nbench plugins        # shows {name}\nbench plugins --check --kind {kinds[0]}\n"
        f"pytest tests\n```\n\nUse it in a suite by name: `{component}`.\n")
    return root
