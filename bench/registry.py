"""Typed, lazy registries of components.

A plugin registers a component with ``register(name, target, **meta)`` where ``target`` is a callable
(class or factory function) or a ``"module:attr"`` string imported only when a case uses it, so listing
plugins stays cheap. Unknown names raise :class:`~bench.errors.UnknownComponentError` with a
"did you mean" hint.

A factory's signature is its parameter schema: annotated parameters are validated by pydantic before
any case runs (``Annotated[int, Field(gt=0)]`` gives range checks for free), parameters without a
default are required, and unknown parameters are errors unless the factory takes ``**kwargs``. A
parameter named ``context`` is reserved: bench passes a :class:`~bench.context.BuildContext` there.

:meth:`Registry.resolve` turns a suite spec into a resolved one in one pass (validate, fill defaults,
label); :meth:`Registry.create` builds the object and stamps the registered capabilities
(``requires``, ``provides``) onto it, so a class never repeats them.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import typing
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pydantic

from .errors import UnknownComponentError, UserError
from .hookspecs import REGISTER_HOOKS
from .redact import redact_secrets
from .signatures import static_signature

#: the component kinds, one per registration hook (:data:`bench.hookspecs.REGISTER_HOOKS`)
KINDS = tuple(REGISTER_HOOKS.values())

RESERVED_PARAMS = ("context",)


def _omitted_at_default(annotation: Any) -> bool:
    """Whether ``annotation`` (or a member of its union) carries :class:`bench.types.OmitAtDefault`."""
    from .types import OmitAtDefault

    metas = list(getattr(annotation, "__metadata__", ()))
    metas += [m for a in typing.get_args(annotation) for m in getattr(a, "__metadata__", ())]
    return any(isinstance(m, OmitAtDefault) for m in metas)
#: registration meta stamped onto every created object as a frozenset (declared once, at registration)
CAPABILITIES = ("requires", "provides")


def label(spec: dict[str, Any] | None) -> str:
    """A readable, stable label of a spec: its ``id``, or ``name[k=v,...]`` over its parameters
    (sorted; nested specs, lists and floats formatted by :func:`_format_value`); the values of
    secret-looking keys show as ``***`` (:func:`bench.redact.redact_secrets`)."""
    if spec is None:
        return "none"
    if spec.get("id"):
        return str(spec["id"])
    params = redact_secrets({k: v for k, v in spec.items() if k not in ("name", "id")})
    if not params:
        return spec["name"]
    return f"{spec['name']}[" + ",".join(f"{k}={_format_value(v)}" for k, v in sorted(params.items())) + "]"


def _format_value(value: Any) -> str:
    """A parameter value inside a label: a nested spec as its ``id`` or ``name(k=v,...)``."""
    if isinstance(value, dict):
        if "id" in value:
            return str(value["id"])
        inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(value.items()) if k != "name")
        name = str(value.get("name", ""))
        return f"{name}({inner})" if inner else name
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Entry:
    """One registered component: where it lives, who registered it, and what it declares."""

    kind: str
    name: str
    target: Any
    plugin: str = "?"
    defaults: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    _resolved: Any = None
    _signature: inspect.Signature | None = None

    def load(self) -> Callable[..., Any]:
        """Import the target if it is a ``"module:attr"`` string; return the factory."""
        if self._resolved is None:
            target = self.target
            if isinstance(target, str):
                module_name, _, attr = target.partition(":")
                if not attr:
                    raise ValueError(f"{self.kind} '{self.name}': target must be 'module:attr', got {target!r}")
                obj: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                target = obj
            if not callable(target):
                raise TypeError(f"{self.kind} '{self.name}' target {target!r} is not callable")
            self._resolved = target
        return self._resolved

    def param_model(self) -> type[pydantic.BaseModel]:
        """A pydantic model built from the factory signature (see module docstring)."""
        sig = self.signature()
        fields: dict[str, Any] = {}
        extra = "forbid"
        for p in sig.parameters.values():
            if p.name in RESERVED_PARAMS or p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.VAR_KEYWORD:
                extra = "allow"
                continue
            ann = Any if p.annotation is inspect.Parameter.empty else p.annotation
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (ann, default)
        config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True)
        return pydantic.create_model(f"{self.kind}_{self.name}_params".replace("/", "_").replace("-", "_"),
                                     __config__=config, **fields)

    def signature(self) -> inspect.Signature:
        """The factory signature as a suite sees it: string annotations (``from __future__ import
        annotations``) evaluated, and the parameters filled from the build context (meta
        ``from_context``) left out. Read from the factory's source without importing it where that is
        exact (:mod:`bench.signatures`; this keeps ``bench validate`` free of torch), else from the
        imported factory."""
        if self._signature is None:
            sig = static_signature(self.target) if isinstance(self.target, str) and self._resolved is None else None
            if sig is None:
                factory = self.load()
                try:
                    sig = inspect.signature(factory, eval_str=True)
                except (NameError, TypeError, SyntaxError):
                    sig = inspect.signature(factory)
            hidden = self.from_context()
            self._signature = sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in hidden])
        return self._signature

    def from_context(self) -> dict[str, str]:
        """Parameters bench fills from the :class:`~bench.context.BuildContext` when it builds the
        component (meta ``from_context``: parameter -> attribute path, e.g. ``{"shape": "data.shape"}``),
        so that they are neither suite parameters nor part of the spec."""
        return dict(self.meta.get("from_context") or {})

    def context_values(self, context: Any) -> dict[str, Any]:
        """The values of :meth:`from_context`'s parameters read from ``context``."""
        values = {}
        for param, path in self.from_context().items():
            value = context
            for attr in path.split("."):
                value = getattr(value, attr, None)
            if value is None:
                raise ValueError(f"{self.kind} '{self.name}' needs {path} from the build context "
                                 f"(parameter '{param}'): build it with a context whose {path} is set")
            values[param] = value
        return values

    def accepts_context(self) -> bool:
        return "context" in self.signature().parameters

    def signature_default(self, key: str) -> Any:
        """A copy of the factory's default for parameter ``key`` (None when it has none)."""
        param = self.signature().parameters.get(key)
        if param is None or param.default is inspect.Parameter.empty:
            return None
        return copy.deepcopy(param.default)

    def json_defaults(self) -> dict[str, Any]:
        """The factory's JSON-representable defaults, the entry's presets taking precedence (tuples as
        lists), so a logged spec rebuilds the component exactly."""
        out = {}
        for p in self.signature().parameters.values():
            if p.name in RESERVED_PARAMS or p.default is inspect.Parameter.empty \
                    or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or _omitted_at_default(p.annotation):
                continue
            default = self.defaults.get(p.name, p.default)
            if isinstance(default, tuple):
                default = list(default)
            try:
                json.dumps(default)
            except (TypeError, ValueError):
                continue
            out[p.name] = default
        return out

    def nested(self) -> dict[str, str]:
        """Parameters that are themselves components (meta ``components``): parameter -> kind."""
        return dict(self.meta.get("components") or {})


class Registry:
    """The components of one kind. ``failed`` (shared by all kinds, filled by the plugin manager) maps
    the name of each plugin that failed to load to an object with ``error`` (one line) and
    ``mentions(name)`` (whether its source names that component), so an unknown name can point at the
    broken plugin that probably provides it."""

    def __init__(self, kind: str, failed: dict[str, Any] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.failed = failed if failed is not None else {}

    def register(self, name: str, target: Any, *, plugin: str = "?", defaults: dict | None = None,
                 **meta: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and self._entries[name].plugin != plugin:
            raise ValueError(f"{self.kind} '{name}' is registered twice "
                             f"(by '{self._entries[name].plugin}' and '{plugin}')")
        self._entries[name] = Entry(self.kind, name, target, plugin, dict(defaults or {}), meta)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str, location=None) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self._entries, location, self._broken(name)) from None

    def _broken(self, name: str) -> str | None:
        """The failed plugins behind an unknown ``name``: those whose source names it, else all of them."""
        if not self.failed:
            return None
        likely = [p for p, f in self.failed.items() if _mentions(f, name)]
        if likely:
            return "; ".join(f"plugin '{p}' failed to load: {_short(self.failed[p].error)}" for p in likely)
        return "plugins that failed to load: " + ", ".join(
            f"'{p}' ({_short(f.error)})" for p, f in self.failed.items())

    def validate(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` (with the entry's presets) against the factory signature; return them
        coerced to JSON-representable values.

        Raises :class:`pydantic.ValidationError` (the suite layer maps its ``loc`` to file:line).
        """
        entry = self.entry(name)
        merged = {**entry.defaults, **params}
        validated = entry.param_model().model_validate(merged)
        dumped = validated.model_dump(mode="json")  # JSON-representable: hashed, logged, rebuilt
        return {k: dumped[k] for k in merged if k in dumped}

    def resolve(self, name: str, params: dict[str, Any], spec_id: Any = None,
                resolve_nested: Callable[[str, str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Resolve one spec in one pass: label it, resolve its nested components, validate it and fill
        the factory's defaults.

        Returns ``{"name", **params (validated), "id": label, **defaults not set}`` where the label (so
        the case id) names only what the user set (``spec_id`` if given), a nested component the user
        left unset is the factory's default spec made explicit, and every other default is filled in,
        so the logged spec rebuilds the component exactly. ``resolve_nested(param, kind, spec)``
        resolves a nested component (the suite layer recurses with its file positions).
        Raises :class:`pydantic.ValidationError` for invalid values.
        """
        entry = self.entry(name)
        params = dict(params)
        user_label = str(spec_id) if spec_id else label({"name": name, **params})
        nested = entry.nested()
        for key, kind in nested.items():
            if key not in params:  # make the factory's default explicit, so it is logged and hashed
                default = entry.signature_default(key)
                if isinstance(default, (str, dict)):
                    params[key] = default
            if params.get(key) is not None and resolve_nested is not None:
                params[key] = resolve_nested(key, kind, params[key])
        validated = self.validate(name, params)
        validated.update({key: params[key] for key in nested if key in params})  # keep resolved sub-specs
        out = {"name": name, **{k: validated[k] for k in params if k in validated}, "id": user_label}
        for key, value in entry.json_defaults().items():
            out.setdefault(key, value)
        return out

    def create(self, spec: dict[str, Any], context: Any = None) -> Any:
        """Build a component from ``{"name": ..., **params}``; pass ``context`` if accepted. The
        entry's registered capabilities (``requires``, ``provides``) are stamped onto the object (united
        with any the object set on itself in ``__init__`` from its parameters, e.g. a path-dependent
        capability)."""
        spec = dict(spec)
        name = spec.pop("name")
        spec.pop("id", None)
        entry = self.entry(name)
        params = {**entry.defaults, **spec, **entry.context_values(context)}
        factory = entry.load()
        if entry.accepts_context():
            params["context"] = context
        obj = factory(**params)
        stamps: dict[str, Any] = {"bench_spec": {"name": name, **spec}}
        for key in CAPABILITIES:
            if key in entry.meta:  # the registered capabilities, plus any the object derived from its parameters
                stamps[key] = frozenset(entry.meta[key]) | frozenset(vars(obj).get(key, ()) if hasattr(obj, "__dict__") else ())
        for key, value in stamps.items():
            try:
                setattr(obj, key, value)
            except AttributeError:  # objects with __slots__ or builtins
                pass
        return obj


def _mentions(failure: Any, name: str) -> bool:
    try:
        return bool(failure.mentions(name))
    except Exception:  # noqa: BLE001 - a hint must never fail the error it decorates
        return False


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Registries:
    """One :class:`Registry` per component kind, addressed as ``regs.sampler`` or ``regs["sampler"]``;
    ``failed_plugins`` is shared by all of them (see :class:`Registry`)."""

    def __init__(self) -> None:
        self.failed_plugins: dict[str, Any] = {}
        self._by_kind = {kind: Registry(kind, self.failed_plugins) for kind in KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise UserError(f"unknown component kind '{kind}'", hint=f"kinds: {', '.join(KINDS)}") from None

    def __getattr__(self, kind: str) -> Registry:
        if kind.startswith("_"):
            raise AttributeError(kind)
        try:
            return self._by_kind[kind]
        except KeyError:
            raise AttributeError(kind) from None

    def items(self):
        return self._by_kind.items()
