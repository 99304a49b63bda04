"""Conformance of components to their protocols (:mod:`bench.protocols`), for bench and plugin authors.

- :func:`conformance_problems` ``(obj, kind)``: one line per member the object lacks, or that cannot
  be called with the positional arguments bench passes it (the protocol's arity);
- :func:`assert_conforms` ``(obj, kind)``: the pytest helper (an ``AssertionError`` listing them);
- :func:`check_component` ``(registries, kind, name)``: build a registered component with its default
  parameters and a small build context (:func:`probe_context`) and check it;
- :func:`class_problems` ``(entry)``: the cheap check ``bench validate`` runs on the components a
  suite uses: a registered *class*'s methods, without building anything.

``bench plugins --check`` runs :func:`check_component` on every registered component.
"""
from __future__ import annotations

import inspect
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .protocols import PROTOCOLS, DataInfo, Member, members
from .signatures import FUNCTION, OTHER, STATIC, UNKNOWN, static_members

#: members a built-in ``torch.nn.Module`` supplies (not worth checking on a class)
_MODULE_MEMBERS = ("parameters", "state_dict", "load_state_dict", "train", "eval")


def _protocol(kind: str) -> type:
    if kind not in PROTOCOLS:
        raise UserError(f"unknown component kind '{kind}'", hint=f"kinds: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[kind]


def _arity_problem(fn: Any, member: Member, what: str, bound: bool = True) -> str | None:
    """A line if ``fn`` cannot take ``member.arity`` positional arguments (``self`` included when unbound)."""
    try:
        sig = fn if isinstance(fn, inspect.Signature) else inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return None
    args = [None] * (member.arity + (0 if bound else 1))
    try:
        sig.bind(*args)
    except TypeError:
        shown = "()" if member.arity == 0 else f"({member.arity} positional argument{'s' if member.arity > 1 else ''})"
        return f"{what}.{member.name}{sig} cannot be called as {member.name}{shown}, as bench calls it"
    return None


def _members(kind: str, obj: Any) -> list[Member]:
    out = members(_protocol(kind))
    if kind == "feature_extractor" and hasattr(obj, "features_for"):  # the cached-features form
        return [Member("features_for", 2, False, "")]
    return out


def conformance_problems(obj: Any, kind: str, what: str | None = None) -> list[str]:
    """Lines naming each protocol member ``obj`` lacks or cannot be called as bench calls it."""
    what = what or f"{kind} {type(obj).__name__}"
    problems = []
    for member in _members(kind, obj):
        if member.name == "__call__":
            if not callable(obj):
                problems.append(f"{what}: is not callable (a feature extractor is f(images) -> (N, d), "
                                "or has features_for(ctx, which))")
                continue
            problem = _arity_problem(obj, member, what)
        elif not hasattr(obj, member.name):
            if member.optional:
                continue
            problems.append(f"{what}: missing {'attribute' if member.arity is None else 'method'} "
                            f"'{member.name}'" + (f" ({member.doc.splitlines()[0]})" if member.doc else ""))
            continue
        elif member.arity is None:
            continue
        else:
            fn = getattr(obj, member.name)
            if not callable(fn):
                problems.append(f"{what}: '{member.name}' must be a method, not {type(fn).__name__}")
                continue
            problem = _arity_problem(fn, member, what)
        if problem:
            problems.append(problem)
    return problems


def assert_conforms(obj: Any, kind: str) -> None:
    """Fail (``AssertionError``) with one line per problem unless ``obj`` follows the ``kind`` protocol."""
    problems = conformance_problems(obj, kind)
    assert not problems, "\n".join(problems)


def class_problems(entry: Any, what: str | None = None) -> list[str]:
    """The cheap check of a registry entry (:class:`bench.registry.Entry`): when its target is a class,
    the protocol methods it defines or inherits, with their arity; attributes and factories are left to
    :func:`check_component` (they exist only once built). A ``"module:attr"`` target is read from source
    where that is exact (:func:`bench.signatures.static_members`), so ``bench validate`` imports no
    plugin module for it."""
    static = static_members(entry.target) if isinstance(entry.target, str) and entry._resolved is None else None
    if static is False:
        return []
    if static is not None:
        module, _, qualname = entry.target.partition(":")
        problems = _member_problems(entry.kind, static, what or f"{entry.kind} '{entry.name}' (plugin "
                                    f"'{entry.plugin}', {module}.{qualname})")
        if problems is not None:
            return problems
    target = entry.load()  # a class the source cannot answer for: import it
    if not inspect.isclass(target):
        return []
    what = what or f"{entry.kind} '{entry.name}' (plugin '{entry.plugin}', {target.__module__}.{target.__qualname__})"
    return _member_problems(entry.kind, _ImportedClass(target), what)


class _ImportedClass:
    """A class's attributes as :func:`_member_problems` asks for them, from the class itself."""

    def __init__(self, cls: type):
        self.cls = cls

    def lookup(self, name: str) -> tuple[str, Any] | None:
        fn = inspect.getattr_static(self.cls, name, None)
        if fn is None:
            return None
        if isinstance(fn, (staticmethod, classmethod)):
            return STATIC, None
        return (FUNCTION, fn) if inspect.isfunction(fn) else (OTHER, None)


def _member_problems(kind: str, cls: Any, what: str) -> list[str] | None:
    """Problems of a class (:class:`_ImportedClass` or :class:`bench.signatures.StaticClass`); None when
    the class's source leaves a needed answer open (:data:`bench.signatures.UNKNOWN`)."""
    problems = []
    answers: dict[str, Any] = {}

    def lookup(name: str) -> Any:
        if name not in answers:
            answers[name] = cls.lookup(name)
            if answers[name] is UNKNOWN:
                raise LookupError(name)
        return answers[name]

    try:
        for member in members(_protocol(kind)):
            problem = _member_problem(kind, member, lookup, what)
            if problem:
                problems.append(problem)
    except LookupError:
        return None
    return problems


def _member_problem(kind: str, member: Member, lookup: Any, what: str) -> str | None:
    """The problem of one protocol member (``lookup(name)`` answers as the class's ``lookup`` does)."""
    if kind == "feature_extractor" and lookup("features_for") is not None:  # the cached-features form
        if member.name != "__call__":
            return None
        member = Member("features_for", 2, False, "")
    if member.arity is None or member.name in _MODULE_MEMBERS:
        return None
    if member.name == "__call__" and (lookup("features_for") is not None or lookup("__call__") is None):
        return None
    found = lookup(member.name)
    if found is None:
        if member.optional:
            return None
        return f"{what}: missing method '{member.name}'" + (f" ({member.doc.splitlines()[0]})" if member.doc else "")
    kind_of, fn = found
    return _arity_problem(fn, member, what, bound=False) if kind_of == FUNCTION else None


# ---------------------------------------------------------------------------------- probing
class ProbeDataset:
    """A tiny in-memory dataset for building components in checks: standard Gaussian points ``(2,)``
    (with their law in ``info.params``, as the oracles need), labelled 8x8 grey images with 17 levels,
    or video ``(10, 1, 8, 8)``."""

    SHAPES = {"points": (2,), "image": (1, 8, 8), "video": (10, 1, 8, 8)}

    def __init__(self, modality: str = "points", n: int = 64):
        import torch

        shape = self.SHAPES[modality]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2 * n, *shape, generator=g)
        if modality != "points":
            x = x.clamp(-1, 1)
        self._splits = {"train": x[:n], "test": x[n:]}
        self._labels = torch.arange(2 * n) % 2
        params: dict[str, Any] = {"num_classes": 2} if modality == "image" else {}
        if modality == "points":
            params = {"kind": "gaussian", "mean": [0.0, 0.0], "cov": [[1.0, 0.0], [0.0, 1.0]]}
        self.info = DataInfo(f"probe-{modality}", shape, modality, levels=None if modality == "points" else 17,
                             value_range=None if modality == "points" else (-1.0, 1.0), params=params)

    def split(self, name: str):
        return self._splits[name]

    def labels(self, split: str):
        n = len(self._splits["train"])
        return self._labels[:n] if split == "train" else self._labels[n:]


def probe_context(registries: Any, modality: str | None = "points", store_dir: str | None = None) -> Any:
    """A build context on a :class:`ProbeDataset` of ``modality`` (None: no dataset, as when building
    a dataset), with a store in ``store_dir`` (default a temporary directory)."""
    from .context import BuildContext
    from .store import Store

    store = Store(store_dir or tempfile.mkdtemp(prefix="bench-check-"))
    dataset = ProbeDataset(modality) if modality else None
    return BuildContext.from_registries(registries, seed=0, store=store, dataset=dataset)


@dataclass
class CheckResult:
    """The outcome of :func:`check_component`: ``problems`` (one line each) or why it was not built."""

    kind: str
    name: str
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None


def _modalities(entry: Any) -> list[str]:
    meta = entry.meta
    if entry.kind == "dataset":
        return [None]
    declared = meta.get("modalities") or ([meta["modality"]] if meta.get("modality") else [])
    return [m for m in declared if m in ProbeDataset.SHAPES] or ["points", "image"]


def check_component(registries: Any, kind: str, name: str, store_dir: str | None = None) -> CheckResult:
    """Build ``kind`` ``name`` with its default parameters on a probe dataset (each modality it declares,
    points then images when it declares none, until one builds) and check it against its protocol.

    Not built (``skipped``): an entry with required parameters, or one whose factory raises a
    :class:`~bench.errors.UserError` (a missing weights file or data root). Any other exception is a problem."""
    entry = registries[kind].entry(name)
    result = CheckResult(kind, name)
    what = f"{kind} '{name}' (plugin '{entry.plugin}')"
    try:
        result.problems += class_problems(entry, what)
        sig = entry.signature()
    except Exception as exc:  # noqa: BLE001 - an import error is the plugin's problem, reported as one
        result.problems.append(f"{what}: cannot be loaded: {type(exc).__name__}: {exc}")
        return result
    required = [p.name for p in sig.parameters.values() if p.default is inspect.Parameter.empty
                and p.name != "context" and p.name not in entry.defaults
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if kind == "network":
        required = [r for r in required if r != "in_shape"]
    if required:
        result.skipped = f"needs parameter(s) {', '.join(required)}"
        return result
    errors = []
    for modality in _modalities(entry):
        ctx = probe_context(registries, modality, store_dir)
        spec: dict[str, Any] = {"name": name}
        if kind == "network":
            spec["in_shape"] = list(ProbeDataset.SHAPES[modality or "points"])
        try:
            obj = registries[kind].create(spec, context=ctx)
        except UserError as exc:
            errors.append(("skip", f"{modality or 'no'} data: {exc}"))
            continue
        except Exception as exc:  # noqa: BLE001
            errors.append(("fail", f"{modality or 'no'} data: {type(exc).__name__}: {exc}"))
            continue
        result.problems += [p for p in conformance_problems(obj, kind, what) if p not in result.problems]
        return result
    if any(k == "fail" for k, _ in errors):
        result.problems.append(f"{what}: cannot be built with its defaults: "
                               + "; ".join(m.splitlines()[0][:200] for k, m in errors if k == "fail"))
    else:
        result.skipped = "; ".join(m.splitlines()[0][:200] for _, m in errors)
    return result


def check_registries(registries: Any, kinds: list[str] | None = None) -> list[CheckResult]:
    """:func:`check_component` for every registered component (of ``kinds``), sharing one store."""
    store_dir = tempfile.mkdtemp(prefix="bench-check-")
    return [check_component(registries, kind, entry.name, store_dir)
            for kind, registry in registries.items() if kinds is None or kind in kinds
            for entry in registry]


def check_component_conforms(kind: str, name: str, plugins: tuple[str, ...] = ()) -> None:
    """The plugin author's one-liner: build ``kind`` ``name`` from the installed plugins (and
    ``plugins`` modules) and fail with one line per problem (``AssertionError``)."""
    from .plugins import get_manager

    result = check_component(get_manager(tuple(plugins), fresh=True).registries, kind, name)
    assert not result.problems, "\n".join(result.problems)
    assert result.skipped is None, f"{kind} '{name}' was not built: {result.skipped}"
