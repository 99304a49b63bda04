"""The plugin manager: discovers entry points in group ``bench`` and fills the registries.

Each plugin loads and registers inside its own try/except, so a broken plugin is reported (status
``error`` with a one-line reason in ``bench plugins``) and never takes the CLI down.

Environment:
- ``BENCH_STRICT_PLUGINS=1``: a broken plugin is fatal;
- ``BENCH_LOAD_PLUGINS=a,b``: load only these entry points (allowlist);
- ``BENCH_DISABLE_PLUGINS=a,b``: skip these entry points (blocklist).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import UserError
from .registry import Registries

ENTRY_POINT_GROUP = "bench"


@dataclass
class PluginInfo:
    """What ``bench plugins`` shows for one plugin."""

    name: str
    module: str
    version: str = "?"
    distribution: str = "?"
    status: str = "ok"  # ok | error | disabled
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "version": self.version,
                "distribution": self.distribution, "status": self.status, "error": self.error,
                "components": self.components}


@dataclass
class FailedPlugin:
    """A plugin that failed to load, as the registries see it: an unknown component name is traced
    back to it when its source text names the component (``'blur'`` or ``"blur"``), read without
    importing it (:meth:`bench.registry.Registry.entry`)."""

    module: str
    error: str

    def mentions(self, name: str) -> bool:
        quoted = (f"'{name}'", f'"{name}"')
        return any(q in text for text in _source_texts(self.module) for q in quoted)


_SOURCE_LIMIT = 200  # files read at most per failed plugin (only when a name is unknown)


def _source_texts(module: str):
    """The text of a module's source, or of every ``.py`` file of a package (bounded)."""
    import importlib.util
    from pathlib import Path

    module = module.partition(":")[0].strip()
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # the top-level package: finding it imports nothing
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    if spec.submodule_search_locations:
        files = [f for loc in spec.submodule_search_locations for f in sorted(Path(loc).rglob("*.py"))]
    elif spec.origin and spec.origin.endswith(".py"):
        files = [Path(spec.origin)]
    else:
        return
    for path in files[:_SOURCE_LIMIT]:
        try:
            yield path.read_text(errors="replace")
        except OSError:
            continue


class PluginError(UserError):
    """A plugin failed to load and strict mode is on."""


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


class PluginManager:
    """Owns the pluggy manager, the registries and the per-plugin status."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = Registries()
        self.infos: dict[str, PluginInfo] = {}
        self.strict = os.environ.get("BENCH_STRICT_PLUGINS", "") not in ("", "0", "false", "no")

    # ----------------------------------------------------------------- loading
    def load_entry_points(self) -> None:
        allow = _env_list("BENCH_LOAD_PLUGINS")
        block = _env_list("BENCH_DISABLE_PLUGINS") or set()
        try:
            eps = md.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken distribution's metadata must not take us down
            eps = []
            self._fail(PluginInfo("<entry points>", "?"), exc)
        seen: set[str] = set()
        for ep in sorted(eps, key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, ep.value,
                              version=getattr(dist, "version", "?") or "?",
                              distribution=getattr(dist, "name", "?") or "?")
            if (allow is not None and ep.name not in allow) or ep.name in block:
                info.status = "disabled"
                self.infos[ep.name] = info
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - isolation is the point
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._fail(info, exc)
                continue
            self.add_plugin(plugin, info)

    def load_module(self, module_name: str) -> None:
        """Import a module that is not installed as an entry point (``--plugins module``)."""
        info = PluginInfo(module_name, module_name, version="local", distribution="--plugins")
        try:
            plugin = importlib.import_module(module_name)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UserError(f"--plugins {module_name}: cannot import: {_one_line(exc)}") from None
        self.add_plugin(plugin, info)

    def add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Register ``plugin`` with pluggy and run its registration hooks, isolated."""
        try:
            self.pm.register(plugin, name=info.name)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._fail(info, exc)
            return
        staged: list[tuple[str, str, Any, dict]] = []
        try:
            for hook_name, kind in hookspecs.REGISTER_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not plugin:
                        continue

                    def register(name, target, _kind=kind, **meta):
                        staged.append((_kind, name, target, meta))

                    impl.function(register=register)
            for kind, name, target, meta in staged:
                if name in self.registries[kind]:
                    other = self.registries[kind].entry(name).plugin
                    raise ValueError(f"{kind} '{name}' is already registered by plugin '{other}'")
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.pm.unregister(plugin)
            self._fail(info, exc)
            return
        for kind, name, target, meta in staged:
            defaults = meta.pop("defaults", None)
            self.registries[kind].register(name, target, plugin=info.name, defaults=defaults, **meta)
            info.components.setdefault(kind, []).append(name)
        self.infos[info.name] = info

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        info.status = "error"
        info.error = _one_line(exc)
        info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        self.infos[info.name] = info
        self.registries.failed_plugins[info.name] = FailedPlugin(info.module, info.error)
        if self.strict:
            raise PluginError(f"plugin '{info.name}' failed to load: {info.error}",
                              hint="unset BENCH_STRICT_PLUGINS to skip broken plugins")

    # ----------------------------------------------------------------- queries
    @property
    def hook(self):
        return self.pm.hook

    def versions(self) -> dict[str, str]:
        """Plugin name -> version, for provenance and content hashes."""
        return {name: info.version for name, info in sorted(self.infos.items()) if info.status == "ok"}

    def plugin_of(self, kind: str, name: str) -> str:
        return self.registries[kind].entry(name).plugin


_MANAGER: PluginManager | None = None


def get_manager(extra_modules: list[str] | tuple[str, ...] = (), *, fresh: bool = False) -> PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _MANAGER
    if _MANAGER is None or fresh:
        manager = PluginManager()
        # the core's own plugins: bench_run_case (bench.builtin; plugins may wrap it) and the executors.
        # Neither imports the runner or torch here, so `bench validate` stays light.
        from . import builtin, executors

        manager.pm.register(builtin, name="bench.builtin")
        manager.add_plugin(executors, PluginInfo("bench.executors", "bench.executors",
                                                 version=_bench_version(), distribution="bench"))
        manager.load_entry_points()
        _MANAGER = manager
    for module in extra_modules:
        if module not in _MANAGER.infos:
            _MANAGER.load_module(module)
    return _MANAGER


def _bench_version() -> str:
    try:
        return md.version("bench")
    except md.PackageNotFoundError:
        return "0+unknown"
