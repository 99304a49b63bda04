"""Path-safe names, and containment of paths in a directory.

A suite name becomes a directory (``results/<name>/<timestamp>``), and entry ids become part of
case ids, labels and artifact names; both are checked before anything is written
(docs/reliability.md, "Input, paths and credentials"): at most :data:`MAX_NAME_LEN` characters,
not ``.`` or ``..``, no path separator (``/`` or ``\\``), no NUL or other control character.
"""
from __future__ import annotations

import os
from pathlib import Path

MAX_NAME_LEN = 100


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a path-safe name, or None when it is."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_NAME_LEN:
        return f"is {len(value):,} characters long; at most {MAX_NAME_LEN} are allowed"
    if value in (".", ".."):
        return f"'{value}' is not allowed (it names a directory, not a new one)"
    if "/" in value or "\\" in value:
        return "must not contain a path separator ('/' or '\\\\')"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain control characters (NUL, newline, ...)"
    return None


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path``, with symlinks and ``..`` resolved, is ``root`` or lies under it."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real == base or base in real.parents
