"""Pictures people would rather look at than read: sample grids, loss curves, comparison plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _to_unit(x: np.ndarray, value_range) -> np.ndarray:
    lo, hi = value_range or (float(x.min()), float(x.max()))
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)


def image_grid(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] -> one ``(H', W', C)`` mosaic with 1-pixel gaps."""
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = \
            images[i].transpose(1, 2, 0)
    return grid


def sample_figure(samples: Any, info, path: Path, reference: Any = None, title: str = "") -> bool:
    """Write a PNG of samples: a scatter for points (against held-out data), a mosaic for images,
    frame strips for video. Returns False if the modality has no picture."""
    x = samples.detach().cpu().float().numpy() if hasattr(samples, "detach") else np.asarray(samples)
    if info.modality == "points":
        fig, ax = plt.subplots(figsize=(5, 5))
        if reference is not None:
            r = reference.detach().cpu().numpy() if hasattr(reference, "detach") else np.asarray(reference)
            ax.scatter(r[:, 0], r[:, 1 if r.shape[1] > 1 else 0], s=2, alpha=0.3, c="grey", label="data (test)")
        ax.scatter(x[:, 0], x[:, 1 if x.shape[1] > 1 else 0], s=2, alpha=0.5, c="tab:blue", label="samples")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    elif info.modality == "image":
        grid = image_grid(_to_unit(x, info.value_range))
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
    elif info.modality == "video":
        clips = _to_unit(x[:8], info.value_range)  # (B, T, C, H, W)
        b, t, c, h, w = clips.shape
        frames = clips.reshape(b * t, c, h, w)
        grid = image_grid(frames, nrow=t)
        fig, ax = plt.subplots(figsize=(t * 0.8, b * 0.8 + 0.5))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
    else:
        return False
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def loss_curve(points: Sequence[Sequence[float]], path: Path, title: str = "") -> None:
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if values and min(values) > 0 and max(values) / max(min(values), 1e-12) > 20:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_plot(frame, x: str, y: str, group: str, path: Path, title: str = "", logx: bool = False,
              floor: float | None = None, lo: str | None = None, hi: str | None = None) -> None:
    """One line per value of ``group``: the standard "metric against NFE per sampler" picture.
    The y axis turns logarithmic when the values span more than two decades; ``floor`` (e.g. the
    mean ``swd_floor``) is drawn as a dashed line; the columns ``lo`` and ``hi`` (an interval
    around ``y``, NaN where there is none) are drawn as error bars."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    _lines(ax, frame, x, y, group, logx, floor, lo, hi)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def panels_plot(panels: Sequence[tuple[Any, str, float | None]], x: str, group: str, path: Path,
                title: str = "", lo: str | None = None, hi: str | None = None) -> None:
    """Side by side, one :func:`line_plot` panel per ``(frame, y, floor)``, sharing the x axis and
    the legend (e.g. FID and precision against the guidance scale: the fidelity/diversity frontier)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.0, 4.2), squeeze=False)
    for ax, (frame, y, floor) in zip(axes[0], panels):
        _lines(ax, frame, x, y, group, False, floor, lo, hi)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lines(ax, frame, x: str, y: str, group: str, logx: bool, floor: float | None, lo: str | None,
           hi: str | None) -> None:
    styles = ["-", "--", ":", "-."]
    for i, (key, sub) in enumerate(frame.groupby(group)):
        sub = sub.sort_values(x)
        yerr = None
        if lo and hi:
            below = (sub[y] - sub[lo]).to_numpy(dtype=float)
            above = (sub[hi] - sub[y]).to_numpy(dtype=float)
            if np.isfinite(below).any():
                yerr = np.nan_to_num(np.vstack([below, above]), nan=0.0)
        ax.errorbar(sub[x], sub[y], yerr=yerr, marker="o", markersize=3.5, capsize=2.5,
                    linestyle=styles[(i // 10) % len(styles)], label=str(key))
    if floor is not None and np.isfinite(floor):
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"{y}_floor")
    values = frame[y].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) and values.max() / values.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
