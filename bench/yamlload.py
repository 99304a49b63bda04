"""Safe YAML loading that remembers where every value came from.

Only ``yaml.SafeLoader`` is used: ``!!python/...`` tags and any other non-standard tag are errors.
Besides the data, the loader returns ``positions``: a map from a path of keys and list indices,
e.g. ``("matrix", "family", 1, "noise")``, to the :class:`~bench.errors.Location` of that value, so
that validation errors can point at ``file:line:col``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import Location, SuiteError

Positions = dict[tuple, Location]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (a silent overwrite hides typos)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
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


def _walk(node: yaml.Node, path: tuple, file: str, out: Positions) -> None:
    out[path] = Location(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            # the key itself: used for "unknown key" errors
            out[path + (key, "__key__")] = Location(file, key_node.start_mark.line + 1,
                                                   key_node.start_mark.column + 1)
            _walk(value_node, path + (key,), file, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), file, out)


def _mark_location(file: str, exc: yaml.YAMLError) -> Location:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return Location(file)
    return Location(file, mark.line + 1, mark.column + 1)


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    """Parse ``text``; return ``(data, positions)``. Raises :class:`SuiteError` on bad YAML."""
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
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
    positions: Positions = {}
    if node is not None:
        _walk(node, (), file, positions)
    return data, positions


def load_yaml_file(path: str | Path) -> tuple[Any, Positions]:
    path = Path(path)
    if not path.exists():
        raise SuiteError(f"file not found: {path}")
    if path.is_dir():
        raise SuiteError(f"{path} is a directory, not a suite file")
    try:
        raw = path.read_bytes()
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
