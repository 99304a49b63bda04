"""The one bits-per-dim convention (DESIGN.md section 7; flows-math.md section 1.8, thesis 4.3.5).

Data with L quantisation levels k in {0, ..., L-1} is dequantised uniformly, ``y = (k + u) / L`` in
[0, 1]^D with u ~ U[0, 1)^D. A model reports the density of ``x = a * y + b`` (its model space);
with the change of variables, ``log p_Y(y) = log p_X(x) + D log|a|``, and the discrete
probability of k is bounded below by the density of y times the bin volume ``L^-D``, so

    bpd = ( -log p_Y(y) + D log L ) / (D ln 2)
        = ( -log p_X(x) - D log|a| + D log L ) / (D ln 2).

Quantised data itself lives on the grid ``x = 2 k / (L - 1) - 1`` (:func:`model_from_levels`), the
one map every dataset, metric and discrete likelihood uses. Nothing here assumes 8 bits: L comes from the dataset.
"""
from __future__ import annotations

import math

import torch


def model_from_levels(k: torch.Tensor, levels: int) -> torch.Tensor:
    """The model-space value ``x = 2 k / (L - 1) - 1`` of level k in {0, ..., L-1}: the L levels
    spread evenly over [-1, 1] (the training grid of quantised data, and the bin centres of a
    discrete likelihood). Inverse of :func:`levels_from_model`."""
    return 2 * k / (levels - 1) - 1


def levels_from_model(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels k (as floats) of model-space values, the nearest k of :func:`model_from_levels`."""
    k = torch.round((x + 1) / 2 * (levels - 1))
    return k.clamp(0, levels - 1)


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Model-space x snapped to the nearest of the L levels, ``model_from_levels(levels_from_model(x))``."""
    return model_from_levels(levels_from_model(x, levels), levels)


def dequantize(x: torch.Tensor, levels: int, u: torch.Tensor) -> torch.Tensor:
    """``y = (k + u) / L`` in [0, 1), with ``u`` uniform noise of x's shape."""
    return (levels_from_model(x, levels) + u) / levels


def unit_to_model(y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The affine map ``x = 2 y - 1`` from [0, 1] to [-1, 1] and its per-dimension log|a| = ln 2."""
    return 2 * y - 1, math.log(2.0)


def bits_per_dim(nll_model_nats: torch.Tensor, dim: int, levels: int | None,
                 log_scale_per_dim: float = 0.0) -> torch.Tensor:
    """Bits per dimension from a continuous NLL in model space (nats, per sample).

    ``log_scale_per_dim`` is log|a| of the affine map from dequantised [0, 1] data to model space
    (``ln 2`` for [-1, 1]); plus any further pre-transform's per-dim log det, which the caller adds
    to the NLL itself. With ``levels=None`` (continuous data) the result is ``nll / (D ln 2)``.
    """
    nll_unit = nll_model_nats - dim * log_scale_per_dim
    if levels is not None:
        nll_unit = nll_unit + dim * math.log(levels)
    return nll_unit / (dim * math.log(2.0))


def discrete_bits_per_dim(nll_discrete_nats: torch.Tensor, dim: int) -> torch.Tensor:
    """Bits per dimension from ``-log P(k)`` of quantised data (e.g. a DDPM VLB)."""
    return nll_discrete_nats / (dim * math.log(2.0))
