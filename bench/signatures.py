"""Factory signatures read from source, without importing the factory's module.

`bench validate` and `bench run --dry-run` need each component's parameter schema (names, defaults,
annotations: :meth:`bench.registry.Entry.param_model`) but not the component. Importing a plugin module
to read a signature would import torch and its friends (about 1.8 s of a 2.2 s validate), so
:func:`static_signature` rebuilds the signature from the module's syntax tree instead, and only where
it can do so exactly:

- the target is a top-level function, or a class whose ``__init__`` is its own or a base class's that
  can itself be read this way (bases in the same module or imported from a module found on disk);
- no decorator, metaclass, ``__new__`` or ``__signature__`` that could change the signature;
- every name in an annotation or default resolves to a builtin, a module-level constant of the same
  module (itself resolvable), or a name imported from a *light* module: one whose top-level imports
  reach only the standard library and the packages in :data:`LIGHT_PACKAGES`, followed recursively
  through the source of bench and of the plugin packages (``bench.types`` is light; ``bench.rng``,
  which imports torch, is not; any other library is taken as heavy without reading it).

Anything else returns None and the caller imports the module as before, so the result is the same
either way; ``tests/test_signatures.py`` checks that the two agree for every built-in component.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

#: third-party packages that are cheap to import and may appear in parameter annotations
LIGHT_PACKAGES = frozenset({"typing_extensions", "pydantic", "annotated_types", "pydantic_core"})
#: bases whose signature is ``object``'s
_PLAIN_BASES = frozenset({"object", "ABC", "abc.ABC"})
_MAX_DEPTH = 12


class _NotStatic(Exception):
    """The signature cannot be read exactly from source: import the module instead."""


def static_signature(target: str) -> inspect.Signature | None:
    """The signature of ``"module:attr"`` read from source, or None when that cannot be exact."""
    module, _, attr = target.partition(":")
    if not attr or "." in attr:
        return None
    _FOLLOWED.add(module.split(".")[0])
    try:
        return _Module.get(module).signature_of(attr, depth=0)
    except _NotStatic:
        return None
    except (RecursionError, SyntaxError, ValueError, OSError, ImportError):
        return None


class _Module:
    """One module's source: its top-level definitions, imports and single assignments."""

    _cache: dict[tuple, "_Module"] = {}

    def __init__(self, name: str, path: Path, is_package: bool):
        self.name, self.path, self.is_package = name, path, is_package
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.defs: dict[str, ast.AST] = {}
        self.assigned: dict[str, ast.expr | None] = {}
        self.imported: dict[str, tuple[str, str | None]] = {}  # name -> (module, attribute or None)
        for node in self.tree.body:
            self._index(node)
        self._values: dict[str, Any] = {}

    @classmethod
    def get(cls, name: str) -> "_Module":
        """The parsed source of module ``name`` (cached while its file is unchanged)."""
        spec = find_spec_quietly(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise _NotStatic(f"no source for {name}")
        path = Path(spec.origin)
        stat = path.stat()
        key = (name, str(path), stat.st_mtime_ns, stat.st_size)
        if key not in cls._cache:
            cls._cache[key] = cls(name, path, bool(spec.submodule_search_locations))
            _LIGHT.clear()  # a new or changed source may change what is light
        return cls._cache[key]

    def _index(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.defs[node.name] = node
            self.assigned.pop(node.name, None)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in _target_names(target):
                    # a name assigned twice (or by unpacking) has no single value: treated as not static
                    single = isinstance(target, ast.Name) and name not in self.assigned and name not in self.defs
                    self.assigned[name] = node.value if single else None
        elif isinstance(node, ast.ImportFrom):
            base = self._absolute(node.module, node.level)
            for alias in node.names:
                if alias.name != "*":
                    self.imported[alias.asname or alias.name] = (base, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.imported[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    self.imported[top] = (top, None)
        else:  # if/try/for/with/augmented assignment...: whatever they bind has no single static value
            for name in _bound_names(node):
                self.defs.pop(name, None)
                self.imported.pop(name, None)
                self.assigned[name] = None

    def _absolute(self, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        package = self.name if self.is_package else self.name.rpartition(".")[0]
        parts = package.split(".")
        if level > 1:
            parts = parts[: len(parts) - (level - 1)]
        return ".".join(p for p in parts + ([module] if module else []) if p)

    # ------------------------------------------------------------------ signatures
    def definition(self, attr: str, depth: int) -> tuple["_Module", ast.AST]:
        """(module, node) where ``attr`` is defined, following re-exports."""
        if depth > _MAX_DEPTH:
            raise _NotStatic("too deep")
        if attr in self.defs:
            return self, self.defs[attr]
        if attr in self.imported and self.imported[attr][1] is not None:
            module, name = self.imported[attr]
            return _Module.get(module).definition(name, depth + 1)
        raise _NotStatic(f"{attr} is not a plain definition")

    def signature_of(self, attr: str, depth: int) -> inspect.Signature:
        if depth > _MAX_DEPTH:
            raise _NotStatic("too deep")
        node = self.defs.get(attr)
        if node is None:
            if attr in self.imported:  # a re-export: follow it
                module, name = self.imported[attr]
                if name is None:
                    raise _NotStatic("a module is not a factory")
                return _Module.get(module).signature_of(name, depth + 1)
            raise _NotStatic(f"{attr} is not a plain definition")
        if isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                raise _NotStatic("decorated function")
            return self._build(node.args, drop_first=False)
        if isinstance(node, ast.ClassDef):
            return self._class_signature(node, depth)
        raise _NotStatic("async factory")

    def _class_signature(self, node: ast.ClassDef, depth: int) -> inspect.Signature:
        if node.decorator_list or node.keywords:
            raise _NotStatic("decorated class or metaclass")
        members = {m.name: m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned = {n for m in node.body if isinstance(m, (ast.Assign, ast.AnnAssign))
                    for t in (m.targets if isinstance(m, ast.Assign) else [m.target]) for n in _target_names(t)}
        if {"__new__", "__signature__", "__call__"} & (set(members) | assigned) or "__init__" in assigned:
            raise _NotStatic("custom construction")
        init = members.get("__init__")
        if init is not None:
            if init.decorator_list or not isinstance(init, ast.FunctionDef):
                raise _NotStatic("decorated __init__")
            class_names = set(members) | assigned | {n.name for n in node.body if isinstance(n, ast.ClassDef)}
            if class_names & _names_in(init.args):  # a default may read the class body's names
                raise _NotStatic("__init__ reads a class-level name")
            return self._build(init.args, drop_first=True)
        bases = [b for b in node.bases if _dotted(b) not in _PLAIN_BASES]
        if not bases:
            return inspect.Signature()
        if len(bases) > 1:
            # the first base in the MRO that defines __init__ wins: safe only if at most one base has one
            raise _NotStatic("several bases")
        name = _dotted(bases[0])
        if name is None or "." in name:
            raise _NotStatic("base is not a plain name")
        if name in self.defs:
            return self.signature_of(name, depth + 1)
        if name in self.imported and self.imported[name][1] is not None:
            module, attr = self.imported[name]
            return _Module.get(module).signature_of(attr, depth + 1)
        raise _NotStatic(f"base {name} not found")

    def _build(self, args: ast.arguments, drop_first: bool) -> inspect.Signature:
        P = inspect.Parameter
        positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        params = []
        for (arg, kind), default in zip(positional, defaults):
            params.append(self._param(arg, kind, default))
        if drop_first:
            if not params:
                raise _NotStatic("__init__ without self")
            params = params[1:]
        if args.vararg:
            params.append(self._param(args.vararg, P.VAR_POSITIONAL, None))
        for arg, default in zip(args.kwonlyargs, args.kw_defaults):
            params.append(self._param(arg, P.KEYWORD_ONLY, default))
        if args.kwarg:
            params.append(self._param(args.kwarg, P.VAR_KEYWORD, None))
        return inspect.Signature(params)

    def _param(self, arg: ast.arg, kind: Any, default: ast.expr | None) -> inspect.Parameter:
        annotation = inspect.Parameter.empty
        if arg.annotation is not None and arg.arg not in _UNEVALUATED:
            annotation = self.evaluate(arg.annotation)
            if isinstance(annotation, str):  # a quoted annotation: evaluated as inspect's eval_str does
                annotation = self.evaluate(ast.parse(annotation, mode="eval").body)
        value = inspect.Parameter.empty if default is None else self.evaluate(default)
        return inspect.Parameter(arg.arg, kind, default=value, annotation=annotation)

    # ------------------------------------------------------------------ values
    def evaluate(self, expr: ast.expr) -> Any:
        code = compile(ast.Expression(body=expr), str(self.path), "eval")
        try:
            return eval(code, {"__builtins__": builtins}, _Names(self))  # noqa: S307 - the plugin's own source
        except _NotStatic:
            raise
        except Exception as exc:  # noqa: BLE001 - anything unexpected: import the module instead
            raise _NotStatic(f"cannot evaluate: {exc}") from None

    def value(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name in self.imported:
            module, attr = self.imported[name]
            if _is_light(module):
                obj = importlib.import_module(module)
                if attr is not None:
                    obj = getattr(obj, attr) if hasattr(obj, attr) else importlib.import_module(f"{module}.{attr}")
            elif attr is not None:  # a heavy module's alias or constant, read from its source
                obj = _Module.get(module).value(attr)
            else:
                raise _NotStatic(f"{module} is not light")
        elif name in self.assigned:
            expr = self.assigned[name]
            if expr is None:
                raise _NotStatic(f"{name} has no single value")
            self._values[name] = _IN_PROGRESS
            obj = self.evaluate(expr)
        elif name in self.defs:
            raise _NotStatic(f"{name} is defined by code")
        elif hasattr(builtins, name):
            obj = getattr(builtins, name)
        else:
            raise _NotStatic(f"unknown name {name}")
        self._values[name] = obj
        return obj


#: parameters whose annotation bench never evaluates (the reserved ``context``: see bench.registry)
_UNEVALUATED = ("context",)
_IN_PROGRESS = object()


class _Names(dict):
    """The namespace an annotation or default is evaluated in: names resolved on demand."""

    def __init__(self, module: _Module):
        super().__init__()
        self.module = module

    def __getitem__(self, name: str) -> Any:
        value = self.module.value(name)
        if value is _IN_PROGRESS:
            raise _NotStatic(f"{name} refers to itself")
        return value


def _bound_names(node: ast.AST) -> set[str]:
    """Every name a top-level statement binds at import time (assignments, loop targets, imports,
    definitions, ``as`` targets), searched through its blocks."""
    names = set()
    for sub in _import_time_nodes([node]):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
            names.add(sub.id)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in sub.names)
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            names.add(sub.name)
    return names


def find_spec_quietly(name: str):
    """The module spec of ``name`` found on the path without importing anything (``find_spec`` would
    import the parent packages); None when not found."""
    if name in sys.modules and getattr(sys.modules[name], "__spec__", None) is not None:
        return sys.modules[name].__spec__
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])  # a top-level lookup imports nothing; meta-path finders apply
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec


def _names_in(args: ast.arguments) -> set[str]:
    """Every name read by the annotations and defaults of ``args``."""
    nodes = [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs if a.annotation is not None]
    nodes += [a.annotation for a in (args.vararg, args.kwarg) if a is not None and a.annotation is not None]
    nodes += list(args.defaults) + [d for d in args.kw_defaults if d is not None]
    return {n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)}


def _target_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _target_names(elt)]
    return []


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


_LIGHT: dict[str, bool] = {}
#: top-level packages whose source is followed: bench and the packages components are registered from
_FOLLOWED: set[str] = {"bench"}


def _is_light(module: str) -> bool:
    """Whether importing ``module`` stays cheap: standard library, :data:`LIGHT_PACKAGES`, a namespace
    package, or source whose import-time imports are all light (followed recursively; a cycle counts
    as light, since the modules on it are judged by their other imports). Parents are judged first,
    because finding a submodule imports its parents."""
    if module in _LIGHT:
        return _LIGHT[module]
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in LIGHT_PACKAGES:
        _LIGHT[module] = True
        return True
    if top not in _FOLLOWED:  # another library (torch, numpy, ...): not read, taken as heavy
        _LIGHT[module] = False
        return False
    parent = module.rpartition(".")[0]
    if parent and not _is_light(parent):
        _LIGHT[module] = False
        return False
    _LIGHT[module] = True  # provisional, for cycles
    try:
        spec = find_spec_quietly(module)
        if spec is not None and spec.origin in (None, "namespace") and spec.submodule_search_locations:
            return True  # a namespace package runs no code
        source = _Module.get(module)
    except (_NotStatic, ImportError, ValueError, SyntaxError, OSError):
        _LIGHT[module] = False
        return False
    deps = {m for m, _ in source.imported.values()} | _nested_imports(source)
    light = all(_is_light(dep) for dep in deps if dep)
    for base, attr in source.imported.values():  # ``from pkg import sub`` imports the submodule too
        if light and attr is not None and _is_submodule(base, attr):
            light = _is_light(f"{base}.{attr}")
    _LIGHT[module] = light
    return light


def _is_submodule(package: str, name: str) -> bool:
    try:
        return find_spec_quietly(f"{package}.{name}") is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _nested_imports(source: _Module) -> set[str]:
    """Modules imported by statements that run at import time besides the top-level imports (inside
    ``try``/``if`` blocks and class bodies). Imports inside functions do not run at import time."""
    found = set()
    for sub in _import_time_nodes(source.tree.body):
        if isinstance(sub, ast.ImportFrom):
            found.add(source._absolute(sub.module, sub.level))
        elif isinstance(sub, ast.Import):
            found.update(alias.name for alias in sub.names)
    return found


def _import_time_nodes(body: list[ast.stmt]):
    """Every node executed when a module is imported (function bodies skipped, class bodies kept)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        stack = [node]
        while stack:
            sub = stack.pop()
            yield sub
            for child in ast.iter_child_nodes(sub):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    stack.append(child)


# ---------------------------------------------------------------------------------- class members
#: what a class attribute is, as far as a protocol check cares (see :func:`static_members`)
FUNCTION, STATIC, OTHER = "function", "static", "other"
_KNOWN_METHOD_DECORATORS = {"abstractmethod": FUNCTION, "abc.abstractmethod": FUNCTION,
                            "staticmethod": STATIC, "classmethod": STATIC,
                            "property": OTHER, "functools.cached_property": OTHER, "cached_property": OTHER,
                            # torch's grad-mode decorators wrap with functools.wraps: the signature is kept
                            "torch.no_grad()": FUNCTION, "torch.inference_mode()": FUNCTION,
                            "torch.enable_grad()": FUNCTION}


def static_members(target: str) -> "StaticClass | None | bool":
    """The attributes a registered class has through its bases, read from source
    (:class:`StaticClass`). False when the target is a plain function (not a class); None when the
    source cannot tell exactly (then import it)."""
    module, _, attr = target.partition(":")
    if not attr or "." in attr:
        return None
    _FOLLOWED.add(module.split(".")[0])
    try:
        mod = _Module.get(module)
        mod, node = mod.definition(attr, depth=0)
        if isinstance(node, ast.FunctionDef) and not node.decorator_list:
            return False
        if not isinstance(node, ast.ClassDef):
            return None
        found: dict[str, tuple[str, inspect.Signature | None]] = {}
        chain, closed = _class_chain(mod, node)
        for cls in chain:
            for name, member in _class_body(cls).items():
                found.setdefault(name, member)
        return StaticClass(found, closed)
    except _NotStatic:
        return None
    except (RecursionError, SyntaxError, ValueError, OSError, ImportError):
        return None


class StaticClass:
    """A class's attributes read from source: ``found`` maps name -> (kind, signature), kind
    :data:`FUNCTION` (signature: its parameters, ``self`` included, defaults as markers), :data:`STATIC`
    (static or class method) or :data:`OTHER`. ``closed``: the bases end at ``object`` (or ``ABC``),
    so a name not found is absent; otherwise the chain ends at a library class (``torch.nn.Module``)
    whose attributes are not read, and :meth:`lookup` answers :data:`UNKNOWN` for a name not found."""

    def __init__(self, found: dict[str, tuple[str, inspect.Signature | None]], closed: bool):
        self.found, self.closed = found, closed

    def lookup(self, name: str) -> Any:
        if name in self.found:
            return self.found[name]
        if not self.closed:
            return UNKNOWN
        return (OTHER, None) if hasattr(object, name) else None


UNKNOWN = object()


def _class_chain(mod: _Module, node: ast.ClassDef) -> tuple[list[ast.ClassDef], bool]:
    """The class and its bases in method-resolution order, for single inheritance; True when it ends
    at object/ABC, False when at a class of a library that is not read (its last element's base)."""
    chain = []
    for _ in range(_MAX_DEPTH):
        if node.decorator_list or node.keywords:
            raise _NotStatic("decorated class or metaclass")
        chain.append(node)
        bases = [b for b in node.bases if _dotted(b) not in _PLAIN_BASES]
        if not bases:
            return chain, True
        if len(bases) > 1:
            raise _NotStatic("several bases")
        name = _dotted(bases[0])
        if name is None:
            raise _NotStatic("base is not a plain name")
        head = name.split(".")[0]
        origin = mod.imported.get(head, (None, None))[0]
        if origin is not None and origin.split(".")[0] not in _FOLLOWED | {"bench"}:
            return chain, False  # e.g. nn.Module: a library class, not read
        if "." in name:
            raise _NotStatic("base is an attribute")
        if name in mod.defs:
            mod, node = mod, mod.defs[name]
        elif name in mod.imported and mod.imported[name][1] is not None:
            mod, node = _Module.get(mod.imported[name][0]).definition(mod.imported[name][1], depth=1)
        else:
            raise _NotStatic(f"base {name} not found")
        if not isinstance(node, ast.ClassDef):
            raise _NotStatic("base is not a class")
    raise _NotStatic("too deep")


def _class_body(node: ast.ClassDef) -> dict[str, tuple[str, inspect.Signature | None]]:
    out: dict[str, tuple[str, inspect.Signature | None]] = {}
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kinds = {_KNOWN_METHOD_DECORATORS.get(_decorator_name(d), None) for d in stmt.decorator_list}
            if None in kinds:
                raise _NotStatic(f"method {stmt.name} has an unknown decorator")
            kind = STATIC if STATIC in kinds else OTHER if OTHER in kinds else FUNCTION
            out[stmt.name] = (kind, _shape(stmt.args) if kind == FUNCTION else None)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for name in _target_names(target):
                    if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
                        continue  # an annotation alone binds nothing
                    out[name] = (OTHER, None)
        elif isinstance(stmt, ast.ClassDef):
            out[stmt.name] = (OTHER, None)
        elif not isinstance(stmt, (ast.Expr, ast.Pass)):
            raise _NotStatic("class body with other statements")
    return out


def _decorator_name(node: ast.expr) -> str:
    """``name`` or ``name()`` (a call without arguments), else ``""``."""
    if isinstance(node, ast.Call) and not node.args and not node.keywords:
        inner = _dotted(node.func)
        return f"{inner}()" if inner else ""
    return _dotted(node) or ""


def _shape(args: ast.arguments) -> inspect.Signature:
    """A function's parameters (names, kinds, whether each has a default) without evaluating anything:
    enough to check how it can be called."""
    P, marker = inspect.Parameter, object()
    positional = [(a, P.POSITIONAL_ONLY) for a in args.posonlyargs] + [(a, P.POSITIONAL_OR_KEYWORD) for a in args.args]
    first_default = len(positional) - len(args.defaults)
    params = [P(a.arg, kind, default=marker if i >= first_default else P.empty) for i, (a, kind) in enumerate(positional)]
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    params += [P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else marker)
               for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)
