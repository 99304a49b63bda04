"""Class conditioning and classifier-free guidance, once for every family and sampler
(docs/diffusion.md "Conditional models and guidance").

A class-conditional network takes labels y in 0..K-1 or the null class K ("no label"). Training
replaces each label by K with probability ``label_dropout`` (Ho & Salimans 2022, Algorithm 1), so one
network learns both eps(x, c) and eps(x) = eps(x, null). Sampling with guidance scale w uses

    eps~(x, c) = (1 + w) eps(x, c) - w eps(x, null)                  (Ho & Salimans 2022, eq. 6),

w = 0 being the conditional model and w = -1 the unconditional one. The same combination is applied
to the network's raw output whatever it predicts (eps; x0; v; the flow-matching velocity; EDM's F):
at fixed (x, t) each is an affine function of eps with coefficients that do not depend on the label
(x0 = (x - sigma sqrt(Sigma) eps) / alpha; v and u likewise; D = c_skip x + c_out F), and weights
(1 + w, -w) that sum to one commute with an affine map, so every parameterisation gives the guided
eps of eq. 6 exactly. With ``interval`` = [t_lo, t_hi] guidance applies only where
sigma(t_lo) <= sigma <= sigma(t_hi) (the times of the family's process, whose sigma grows with t;
Kynkaanniemi et al. 2024), elsewhere the conditional output is used alone. Each guided step runs the
network twice, and both calls count as network evaluations (NFE).

Samples are generated for balanced labels: sample i of a sampling run gets class i mod K
(:func:`requested_labels`), whatever the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Condition:
    """What the network calls of a conditioned block use: ``labels`` (B,) int64 (None: the null
    class), the guidance scale w and the optional [t_lo, t_hi] interval of bench time."""

    labels: torch.Tensor | None
    guidance: float = 0.0
    interval: tuple[float, float] | None = None


def guide(call: Callable[..., torch.Tensor], cond: Condition | None, x: torch.Tensor, sigma: Any,
          process: Any) -> torch.Tensor:
    """The (guided) output of a conditional network: ``call(y=labels)``, and where guidance is on,
    (1 + w) call(y=labels) - w call(y=None) (module docstring). ``sigma``: the call's noise level (a
    float or a (B,) tensor), to place it in the interval."""
    labels = None if cond is None else cond.labels
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for a batch of {x.shape[0]}")
    out = call(y=None if labels is None else labels.to(x.device))
    if cond is None or cond.guidance == 0.0 or labels is None:
        return out
    inside = _inside(cond.interval, sigma, process)
    if inside is False:
        return out
    w = cond.guidance
    guided = (1.0 + w) * out - w * call(y=None)
    if inside is True:
        return guided
    mask = inside.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, guided, out)


def _inside(interval: tuple[float, float] | None, sigma: Any, process: Any) -> bool | torch.Tensor:
    """Whether noise level ``sigma`` lies in [sigma(t_lo), sigma(t_hi)] (a bool, or a (B,) mask)."""
    if interval is None:
        return True
    lo, hi = process.sigma(interval[0]), process.sigma(interval[1])
    if isinstance(sigma, torch.Tensor) and sigma.dim() > 0:
        s = sigma.detach().to(torch.float64).cpu()
        mask = (s >= lo) & (s <= hi)
        return True if bool(mask.all()) else (False if not bool(mask.any()) else mask)
    return bool(lo <= float(sigma) <= hi)


def requested_labels(indices: Any, num_classes: int) -> torch.Tensor:
    """The class each sample is generated for: sample index i gets i mod K (balanced over classes)."""
    return torch.as_tensor(list(indices), dtype=torch.int64) % int(num_classes)


def check_labels(labels: Any, x0: torch.Tensor, num_classes: int | None) -> torch.Tensor | None:
    """The training labels of a batch as int64 on ``x0``'s device (None for an unconditional family,
    which ignores them); a conditional family without labels is an error."""
    if num_classes is None:
        return None
    if labels is None:
        raise ValueError("a class-conditional family is trained with loss(x, rng, labels=y): the dataset has no "
                         "labels or the trainer did not pass them")
    return torch.as_tensor(labels).to(device=x0.device, dtype=torch.int64)


__all__ = ["Condition", "check_labels", "guide", "requested_labels"]
