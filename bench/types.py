"""Parameter types shared by components, so that a bound is written once.

Factories annotate their parameters with these; bench validates suite values against them before any
case runs (pydantic, see :mod:`bench.registry`).

- :data:`Steps`: a number of sampling steps (noise levels or integration steps), 1 to 100000. Samplers
  that may use the family's own grid take ``Steps | None`` (None: the full training grid, or the
  solver's own choice).
- :data:`Levels`: the number of noise levels a discrete process is trained on (DDPM's ``T``, SMLD's
  ``L``), 2 to 100000: a grid needs at least two levels.
- :data:`Spacing`: how a discrete grid is respaced to fewer steps (diffusers' names: ``leading``,
  ``trailing``, ``linspace``); samplers take ``Spacing | None`` (None: the process default).
- :class:`OmitAtDefault`: metadata for ``Annotated[...]`` on a parameter added to an existing
  component: at its default it is left out of the resolved spec (so the config, hash and train key of
  every suite that does not set it are those from before it existed); set, it is logged and hashed.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

MAX_STEPS = 100_000

Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Levels = Annotated[int, Field(ge=2, le=MAX_STEPS)]
Spacing = Literal["leading", "trailing", "linspace"]


class OmitAtDefault:
    """``Annotated`` metadata: :meth:`bench.registry.Entry.json_defaults` skips the parameter (module docstring)."""

    def __repr__(self) -> str:
        return "OmitAtDefault()"

    def __eq__(self, other: object) -> bool:  # every instance is the same marker
        return isinstance(other, OmitAtDefault)

    def __hash__(self) -> int:
        return hash(OmitAtDefault)
