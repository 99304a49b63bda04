"""User-facing errors.

Every error a user can cause (bad YAML, unknown names, wrong types, missing files) is a
:class:`UserError`. The CLI prints it as one line, ``file:line:col: error: message``, and exits 2.
Anything else that escapes is a bug in bench or in a plugin and is reported as such.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Location:
    """A position in a suite file (1-based line and column, as editors show them)."""

    file: str | None = None
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [self.file or "<suite>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class BenchError(Exception):
    """Base class of every error bench raises on purpose."""


class UserError(BenchError):
    """An error caused by user input. ``exit_code`` is 2 (usage) by convention."""

    exit_code = 2

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def with_location(self, location: Location | None) -> "UserError":
        if self.location is None or self.location.line is None:
            self.location = location
        return self

    def __str__(self) -> str:
        text = f"{self.location}: error: {self.message}" if self.location else f"error: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class SuiteError(UserError):
    """A suite file is malformed or names things that do not exist."""


class UnknownComponentError(UserError):
    """A component name is not registered in its registry."""

    def __init__(self, kind: str, name: str, known: Iterable[str], location: Location | None = None):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else (
            f"known {kind}s: {', '.join(known)}" if known else f"no {kind} is registered")
        super().__init__(f"unknown {kind} '{name}'", location, hint)
        self.kind, self.name, self.suggestion = kind, name, (close[0] if close else None)


class CaseFailed(BenchError):
    """Raised inside a case to fail it with a clear reason (NaN loss, budget exceeded, ...)."""


class BudgetExceeded(CaseFailed):
    """A case ran past its ``timeout_s`` or ``max_nfe`` budget."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to ``word``, or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return close[0] if close else None
