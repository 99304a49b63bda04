"""Safe YAML loading that remembers where every value came from.

Only ``yaml.SafeLoader`` is used: ``!!python/...`` tags and any other non-standard tag are errors.
Besides the data, the loader returns ``positions``: a map from a path of keys and list indices,
e.g. ``("matrix", "family", 1, "noise")``, to the :class:`~bench.errors.Location` of that value, so
that validation errors can point at ``file:line:col``.

Hostile input is cheap to reject (docs/suites.md, "Limits"): a file larger than
``BENCH_YAML_MAX_BYTES`` (default 1 MiB) is refused before it is parsed, and a document whose tree,
with every alias expanded, has more than ``BENCH_YAML_MAX_NODES`` nodes (default 100,000) is
refused before any value is built, so an alias bomb ("billion laughs") costs milliseconds. Mapping
keys must be plain strings: a complex key (``? [a, b] : c``) or a non-string key (``1: x``) is an
error at its position.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import os

import yaml

from .errors import Location, SuiteError, UserError

Positions = dict[tuple, Location]

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_NODES = 100_000


def _limit(env: str, default: int) -> int:
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{env} must be a positive integer, got '{raw[:40]}'")
    return value


def max_bytes() -> int:
    """The largest suite file accepted, in bytes (``$BENCH_YAML_MAX_BYTES``, default 1 MiB)."""
    return _limit("BENCH_YAML_MAX_BYTES", DEFAULT_MAX_BYTES)


def max_nodes() -> int:
    """The most YAML nodes a document may expand to (``$BENCH_YAML_MAX_NODES``, default 100,000)."""
    return _limit("BENCH_YAML_MAX_NODES", DEFAULT_MAX_NODES)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (a silent overwrite hides typos)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "complex mapping keys are not allowed (keys must be plain strings)",
                    key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping keys must be strings, not {type(key).__name__} ({key_node.value[:40]!r}); "
                    "quote the key", key_node.start_mark)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", mark)
            try:
                seen[key] = True
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be plain scalars", key_node.start_mark) from None
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(root: yaml.Node, file: str, limit: int) -> None:
    """Raise :class:`SuiteError` when the tree under ``root``, with every alias expanded, has more
    than ``limit`` nodes, or when an alias refers to its own ancestor. An alias is the same node
    object in the composed graph, so sizes are memoised per node: the cost is the file's size, not
    the expansion's (a 400-byte bomb that expands to 10^8 nodes is measured in microseconds)."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            size[key] = min(limit + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        if key in open_:
            raise SuiteError("invalid YAML: an alias refers to a node that contains it (recursive alias)",
                             Location(file, node.start_mark.line + 1, node.start_mark.column + 1))
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] > limit:
        raise SuiteError(f"the document expands to more than {limit:,} YAML nodes "
                         "(aliases included; raise BENCH_YAML_MAX_NODES if it is meant)",
                         Location(file, root.start_mark.line + 1, root.start_mark.column + 1))


def _walk(root: yaml.Node, file: str, out: Positions) -> None:
    """Record the location of every value (iteratively: deep nesting is no recursion)."""
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        out[path] = Location(file, node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SuiteError("invalid YAML: complex mapping keys are not allowed (keys must be plain strings)",
                                     Location(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1))
                key = key_node.value
                # the key itself: used for "unknown key" errors
                out[path + (key, "__key__")] = Location(file, key_node.start_mark.line + 1,
                                                       key_node.start_mark.column + 1)
                stack.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i in reversed(range(len(node.value))):
                stack.append((node.value[i], path + (i,)))


def _mark_location(file: str, exc: yaml.YAMLError) -> Location:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return Location(file)
    return Location(file, mark.line + 1, mark.column + 1)


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text``; return ``(data, positions)``. Raises :class:`SuiteError` on bad YAML."""
    limit = max_bytes()
    if len(text) > limit:  # characters: at most as many as bytes
        raise SuiteError(f"the document is larger than {limit:,} bytes (BENCH_YAML_MAX_BYTES)", Location(file))
    positions: Positions = {}
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:  # bounded before any value is built: an alias bomb stops here
                _check_size(node, file, max_nodes())
                _walk(node, file, positions)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.constructor.ConstructorError as exc:
        problem = exc.problem or "cannot construct value"
        if "python/" in problem or "could not determine a constructor" in problem:
            tag = problem.split("tag", 1)[-1].strip().strip("'!") if "tag" in problem else ""
            problem = f"tag '{tag}' is not allowed (suites are plain YAML; no Python objects)" \
                if tag else "only plain YAML tags are allowed"
        raise SuiteError(f"invalid YAML: {problem}", _mark_location(file, exc)) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"invalid YAML: {problem}", _mark_location(file, exc)) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. bad timestamps, deep nesting
        raise SuiteError(f"invalid YAML: {exc}", Location(file)) from None
    return data, positions


def load_yaml_file(path: str | Path) -> tuple[Any, Positions]:
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"file not found: {path}")
    if path.is_dir():
        raise SuiteError(f"{path} is a directory, not a suite file")
    limit = max_bytes()
    try:
        if path.stat().st_size > limit:
            raise SuiteError(f"the file is larger than {limit:,} bytes (BENCH_YAML_MAX_BYTES)",
                             Location(str(path)))
        with path.open("rb") as handle:  # read at most limit + 1 bytes (a growing or special file)
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise SuiteError(f"the file is larger than {limit:,} bytes (BENCH_YAML_MAX_BYTES)",
                             Location(str(path)))
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(f"not a UTF-8 text file (byte {exc.start})", Location(str(path))) from None
    except OSError as exc:
        raise SuiteError(f"cannot read {path}: {exc.strerror}") from None
    return load_yaml_text(text, str(path))


def locate(positions: Positions, path: tuple) -> Location | None:
    """The location of ``path``, or of its nearest ancestor that has one."""
    path = tuple(path)
    while True:
        if path in positions:
            return positions[path]
        if not path:
            return None
        path = path[:-1]
