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


class SuiteErrors(SuiteError):
    """Several problems of one suite, reported together: one line each, in file order."""

    def __init__(self, errors: list[UserError]):
        super().__init__(errors[0].message, errors[0].location, errors[0].hint)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ErrorCollector:
    """Collects the user errors of one validation pass so that every problem is reported in one run.

    Code that can go on after an error (the next matrix entry, the next key) calls :meth:`add` and
    continues; :meth:`raise_if_any` ends the pass. Errors are de-duplicated by their printed line
    (a bad matrix entry is met once per case) and sorted by file position.
    """

    def __init__(self) -> None:
        self._errors: dict[str, UserError] = {}

    def add(self, exc: UserError) -> None:
        for err in getattr(exc, "errors", None) or [exc]:
            self._errors.setdefault(str(err), err)

    def __bool__(self) -> bool:
        return bool(self._errors)

    def __len__(self) -> int:
        return len(self._errors)

    def raise_if_any(self) -> None:
        if not self._errors:
            return
        errors = sorted(self._errors.values(), key=_position)
        raise errors[0] if len(errors) == 1 else SuiteErrors(errors)


def _position(err: UserError) -> tuple:
    loc = err.location or Location()
    return (loc.file or "", loc.line if loc.line is not None else 0, loc.col if loc.col is not None else 0)


class UnknownComponentError(UserError):
    """A component name is not registered in its registry."""

    def __init__(self, kind: str, name: str, known: Iterable[str], location: Location | None = None,
                 broken: str | None = None):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else (
            f"known {kind}s: {', '.join(known)}" if known else f"no {kind} is registered")
        if broken:  # the plugins that failed to load (see Registry.entry): the likely cause goes first
            hint = f"{broken}; {hint}"
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
