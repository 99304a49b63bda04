"""Parameter types of class conditioning and guidance (bench_diffusion.guidance), in a module that
imports no torch, so that ``bench validate`` reads the families' and samplers' signatures from source
(bench.signatures)."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from bench.types import OmitAtDefault


def check_interval(v: tuple[float, float]) -> tuple[float, float]:
    """A guidance interval [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1, else ValueError."""
    if not 0.0 <= v[0] < v[1] <= 1.0:
        raise ValueError(f"guidance_interval must be [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1, got {list(v)}")
    return v


#: class-conditional training on a labelled dataset (num_classes from the data; docs/diffusion.md)
ClassConditional = Annotated[bool, OmitAtDefault()]
#: probability of training on the null class instead of the label (classifier-free guidance)
LabelDropout = Annotated[float, Field(ge=0, lt=1), OmitAtDefault()]
#: classifier-free guidance scale w (0: the conditional model; -1: the unconditional one)
Guidance = Annotated[float, Field(ge=-1, le=100), OmitAtDefault()]
#: [t_lo, t_hi] in the family's time (t = 0 data, t = 1 noise) where guidance applies
GuidanceInterval = Annotated[tuple[float, float], AfterValidator(check_interval), OmitAtDefault()]

__all__ = ["ClassConditional", "LabelDropout", "Guidance", "GuidanceInterval", "check_interval"]
