"""``mcvd``: masked conditional video diffusion (Voleti, Jolicoeur-Martineau and Pal 2022; thesis
chapter 7, sections 7.2.1-7.2.4; diffusion-math.md section 6.2; docs/video.md).

A clip window holds ``past`` frames p, ``current`` (target) frames x_0 (k of them) and ``future`` frames f.
The target block is diffused by bench's VP process, x_t = alpha_t x_0 + sigma_t sqrt(Sigma) eps, and the
network predicts eps conditioned on the (masked) context frames; the loss is the DDPM loss on the target
frames only (7.2.6-7.2.8):

    L = E_{t, [p, x_0, f], eps, m_p, m_f} || eps - eps_theta(x_t | m_p p, m_f f, t) ||^2,

m_p, m_f in {0, 1} per sample, each 0 (all those frames zeroed) with probability 1/2 and independently
(``mask: past_future``); ``mask: past`` masks the past only, ``mask: none`` never masks. The four
(m_p, m_f) cases are the four tasks: future prediction (1, 0), past prediction (0, 1), interpolation
(1, 1), unconditional generation (0, 0). Conditioning: ``concat`` (context frames concatenated to the
noisy frames along channels: network ``unet``) or ``spatin`` (context frames drive per-pixel scale and
shift of every group norm: network ``spatin_unet``). Frames are folded into channels (2-D network).

Sampling: :meth:`MCVD.denoiser` returns the conditional denoiser x_t -> eps_theta(x_t | cond, t) as an
ordinary VP :class:`DiffusionFamily` over the k target frames, so every bench VP sampler (ancestral,
ddim, dpmpp_2m, unipc, ...) runs on it unchanged; the context frames never enter the sampler's state.
:meth:`MCVD.rollout` chains blocks (block-autoregressive, Fig. 7.2): predict k frames, append them,
condition the next block on the latest p frames. The family itself, called by a case's sampler, is the
unconditional model (both masks 0).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from bench.types import Levels

from .families import DiffusionFamily, Spec, build_process
from .processes import Process

Mask = Literal["past", "past_future", "none"]
Cond = Literal["concat", "spatin"]
Task = Literal["predict", "past", "generate", "interpolate"]
NETWORK_FOR = {"concat": "unet", "spatin": "spatin_unet"}
CAPS = ("diffusion", "eps", "score", "x0", "vp", "discrete", "video", "video_predict")


class FrameConditionedNet(nn.Module):
    """x_t (B, k, C, H, W), t -> net(x_t folded to (B, k C, H, W), t, cond folded to (B, (p+f) C, H, W)),
    for a fixed conditioning ``cond`` (B, p+f, C, H, W)."""

    def __init__(self, net: nn.Module, cond: torch.Tensor):
        super().__init__()
        self.net, self.cond = net, cond.flatten(1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1, 2), t, self.cond.to(x)).view_as(x)


class MCVD(DiffusionFamily):
    """The MCVD family: a VP process over ``(current, C, H, W)`` target blocks and a conditional network
    ``net(x, t, cond)`` on frames folded into channels (see the module docstring)."""

    def __init__(self, process: Process, net: nn.Module, *, past: int, current: int, future: int = 0,
                 mask: str = "past", cond: str = "concat", value_range: tuple[float, float] | None = None,
                 video_sampler: Any = None, network_spec: Any = None):
        super().__init__(process, net, name="mcvd", prediction="eps", weighting="eps", value_range=value_range,
                         network_spec=network_spec)
        if past < 1:
            raise ValueError(f"mcvd needs past >= 1 conditioning frames, got {past}")
        if future < 0 or current < 1:
            raise ValueError(f"mcvd needs current >= 1 and future >= 0, got current={current}, future={future}")
        if mask not in ("past", "past_future", "none"):
            raise ValueError(f"mask must be past, past_future or none, got {mask!r}")
        if mask == "past_future" and future < 1:
            raise ValueError("mask past_future needs future >= 1 frames")
        if process.shape[0] != current:
            raise ValueError(f"the process acts on {process.shape[0]} frames, current is {current}")
        self.past, self.current, self.future = past, current, future
        self.window = past + current + future
        self.mask, self.cond_mode = mask, cond
        self.frame_shape = tuple(process.shape[1:])
        self.video_sampler = video_sampler
        self.provides = frozenset(CAPS)
        self.likelihood_methods = {}

    # ------------------------------------------------------------------ conditioning
    def conditioning(self, past: torch.Tensor | None, future: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The network's conditioning (B, p + f, C, H, W): the past then the future frames; a missing
        block (None) is zeros, exactly as a masked block in training."""
        blocks = []
        for frames, n, what in ((past, self.past, "past"), (future, self.future, "future")):
            if n == 0:
                continue
            if frames is None:
                frames = torch.zeros(batch, n, *self.frame_shape)
            elif tuple(frames.shape[1:]) != (n, *self.frame_shape):
                raise ValueError(f"mcvd: {what} frames must have shape (B, {n}, {', '.join(map(str, self.frame_shape))}), "
                                 f"got {tuple(frames.shape)}")
            blocks.append(frames)
        return torch.cat(blocks, 1)

    def denoiser(self, past: torch.Tensor | None = None, future: torch.Tensor | None = None,
                 batch: int | None = None) -> DiffusionFamily:
        """eps_theta(x_t | past, future, t) as a VP family over the target block: the public hook any
        bench VP sampler runs on (``sampler.sample(family.denoiser(past, future), rng)``). ``None``
        for a block masks it (zeros)."""
        if batch is None:
            given = [f for f in (past, future) if f is not None]
            if not given:
                raise ValueError("mcvd.denoiser: give the batch size when both blocks are masked")
            batch = len(given[0])
        bound = FrameConditionedNet(self.net, self.conditioning(past, future, batch))
        return DiffusionFamily(self.process, bound, name="mcvd", prediction="eps", value_range=self.value_range,
                               network_spec=self.network_spec)

    def raw(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """The unconditional network output (both blocks masked): what a case's own sampler draws."""
        bound = FrameConditionedNet(self.net, self.conditioning(None, None, x.shape[0]))
        return bound(x, self.time_input(t, x.shape[0], x.device))

    # ------------------------------------------------------------------ training
    def draw_masks(self, rng: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep_past, keep_future), (B,) floats in {0, 1}: each 0 with probability 1/2, independently,
        for the blocks that ``mask`` masks (7.2.7, 7.2.8); always 1 otherwise."""
        ones = torch.ones(rng.batch_size)
        keep_p = (rng.rand() >= 0.5).float() if self.mask in ("past", "past_future") else ones
        keep_f = (rng.rand() >= 0.5).float() if self.mask == "past_future" else ones
        return keep_p, keep_f

    def training_example(self, video: torch.Tensor, rng: Any):
        """A random window of each clip (B, T, C, H, W): returns (conditioning, target frames,
        keep_past, keep_future); masked blocks are zeroed."""
        b, frames = video.shape[:2]
        if frames < self.window:
            raise ValueError(f"mcvd: clips of {frames} frames are shorter than past + current + future = {self.window}")
        start = rng.randint(frames - self.window + 1).to(video.device)
        idx = start[:, None] + torch.arange(self.window, device=video.device)
        win = video[torch.arange(b, device=video.device)[:, None], idx]
        p, k = self.past, self.current
        keep_p, keep_f = self.draw_masks(rng)
        past = win[:, :p] * keep_p.to(win).view(b, 1, 1, 1, 1)
        future = win[:, p + k:] * keep_f.to(win).view(b, 1, 1, 1, 1) if self.future else None
        return self.conditioning(past, future, b), win[:, p:p + k], keep_p, keep_f

    def loss(self, x0: torch.Tensor, rng: Any) -> torch.Tensor:
        """The DDPM loss on the target frames, mean |eps - eps_theta(x_t | m_p p, m_f f, t)|^2 (7.2.8)."""
        cond, target, _, _ = self.training_example(x0, rng)
        t = self.process.sample_t(rng)
        eps = rng.randn(*self.shape).to(target)
        xt = self.process.q_sample(target, t, eps)
        out = FrameConditionedNet(self.net, cond)(xt, self.time_input(t, len(xt), xt.device))
        return (out - eps).pow(2).mean()

    # ------------------------------------------------------------------ sampling tasks
    def _sampler(self, sampler: Any) -> Any:
        sampler = sampler if sampler is not None else self.video_sampler
        if sampler is None:
            raise ValueError("mcvd: no sampler for video tasks (give video_sampler)")
        return sampler

    @torch.no_grad()
    def rollout(self, task: Task, context: torch.Tensor | None, horizon: int, rng: Any,
                sampler: Any = None) -> torch.Tensor:
        """``horizon`` new frames (B, horizon, C, H, W) for ``task`` (the context is never modified):

        - ``predict``: the frames after ``context`` (>= past frames), blocks conditioned on the latest p;
        - ``past``: the frames before ``context`` (>= future frames), blocks conditioned on the first f,
          past masked, prepended one block at a time;
        - ``generate``: no context; the first block unconditional, the next ones as ``predict``;
        - ``interpolate``: ``context`` = p past then f future frames, the k = ``horizon`` frames between.
        """
        sampler = self._sampler(sampler)
        p, k, f = self.past, self.current, self.future
        n = 0 if context is None else context.shape[1]
        if horizon < 1:
            raise ValueError(f"mcvd: horizon must be >= 1, got {horizon}")
        if task == "interpolate":
            if f < 1 or n != p + f or horizon != k:
                raise ValueError(f"mcvd interpolate: needs future >= 1, a context of past + future = {p + f} frames "
                                 f"and horizon = current = {k}; got {n} frames, horizon {horizon}")
            return sampler.sample(self.denoiser(context[:, :p], context[:, p:]), rng)
        if task == "past":
            if f < 1 or n < f:
                raise ValueError(f"mcvd past: needs future >= 1 and at least {f} context frames, got future={f}, {n}")
            known = context
            while known.shape[1] - n < horizon:
                known = torch.cat([sampler.sample(self.denoiser(None, known[:, :f]), rng), known], 1)
            return known[:, known.shape[1] - n - horizon:known.shape[1] - n]
        if task == "generate":
            if horizon > k and k < p:
                raise ValueError(f"mcvd generate: {horizon} > current = {k} frames needs current >= past ({p})")
            known = sampler.sample(self.denoiser(batch=rng.batch_size), rng)
            n = 0
        elif task == "predict":
            if n < p:
                raise ValueError(f"mcvd predict: needs at least past = {p} context frames, got {n}")
            known = context
        else:
            raise ValueError(f"unknown mcvd task {task!r}: use predict, past, generate or interpolate")
        while known.shape[1] - n < horizon:
            known = torch.cat([known, sampler.sample(self.denoiser(known[:, -p:], None), rng)], 1)
        return known[:, n:n + horizon]

    @property
    def video_tasks(self) -> tuple[str, ...]:
        """The ``video`` metric's tasks (bench_metrics/video.py): prediction and generation always,
        past prediction and interpolation when the model conditions on future frames (``future`` >= 1)."""
        return ("predict", "generate") + (("past", "interpolate") if self.future else ())

    @torch.no_grad()
    def reconstruct_and_predict(self, context: torch.Tensor, context_index, target_index,
                                rng=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``video`` metric's convention (bench_metrics/video.py). MCVD is conditional, not an
        autoencoder: the "reconstruction" of the context frames is the context itself (recon metrics
        are trivially perfect). The task follows from the indices, each by :meth:`rollout`:

        - no context: ``generate`` up to the last target;
        - consecutive context, targets after it: ``predict`` up to the last target;
        - consecutive context, targets before it: ``past`` back to the first target;
        - context = a run of ``past`` frames and a run of ``future`` frames, targets = the ``current``
          frames between them: ``interpolate``.
        """
        ci, ti = list(context_index), list(target_index)
        if not ti:
            return context, context[:, :0]
        if not ci:
            return context, self.rollout("generate", None, max(ti) + 1, rng)[:, ti]
        runs = consecutive_runs(ci)
        if len(runs) == 1 and min(ti) > ci[-1]:
            frames = self.rollout("predict", context, max(ti) - ci[-1], rng)
            return context, frames[:, [t - ci[-1] - 1 for t in ti]]
        if len(runs) == 1 and max(ti) < ci[0]:
            frames = self.rollout("past", context, ci[0] - min(ti), rng)
            return context, frames[:, [t - min(ti) for t in ti]]
        gap = list(range(runs[0][-1] + 1, runs[-1][0])) if len(runs) == 2 else None
        if gap is not None and ti == gap and len(runs[0]) == self.past and len(runs[1]) == self.future:
            return context, self.rollout("interpolate", context, len(ti), rng)
        raise ValueError(f"mcvd: context frames {[c + 1 for c in ci]} and target frames {[t + 1 for t in ti]} are none "
                         f"of its tasks (prediction and past prediction need consecutive context frames; "
                         f"interpolation needs {self.past} past and {self.future} future frames around the targets)")

    def describe(self) -> dict[str, Any]:
        sampler = self.video_sampler
        return {**super().describe(), "past": self.past, "current": self.current, "future": self.future,
                "mask": self.mask, "cond": self.cond_mode, "target_shape": list(self.shape),
                "video_sampler": sampler.describe() if hasattr(sampler, "describe") else None,
                "reconstruction": "the context frames themselves (MCVD conditions on them)"}


def mcvd(past: Annotated[int, Field(ge=1)] = 5, current: Annotated[int, Field(ge=1)] = 5,
         future: Annotated[int, Field(ge=0)] = 0, mask: Mask = "past", cond: Cond = "concat",
         noise: Spec = "isotropic", schedule: Spec = "linear", T: Levels = 1000, network: Spec = None,
         video_sampler: Spec = None, context=None) -> MCVD:
    """MCVD (thesis ch. 7) on a video dataset (T, C, H, W). ``network``: extra parameters of the network
    that ``cond`` implies (``unet`` for concat, ``spatin_unet`` for spatin); ``video_sampler``: the VP
    sampler the ``video`` metric's predictions use (default ``{name: ancestral, steps: 100}``, the
    thesis's 100-step DDPM sampling)."""
    info = getattr(context, "data", None)
    if info is None or info.modality != "video" or len(info.shape) != 4:
        raise ValueError("mcvd needs a video dataset (frames, C, H, W)")
    frames, c, h, w = info.shape
    if past + current + future > frames:
        raise ValueError(f"mcvd: past + current + future = {past + current + future} exceeds the clip's {frames} frames")
    spec = {"name": network} if isinstance(network, str) else dict(network or {})
    spec.pop("id", None)
    name = spec.setdefault("name", NETWORK_FOR[cond])
    if name != NETWORK_FOR[cond]:
        raise ValueError(f"mcvd: cond {cond!r} uses network {NETWORK_FOR[cond]!r}, got {name!r}")
    target = dataclasses.replace(context, data=dataclasses.replace(info, shape=(current, c, h, w)))
    process = build_process("vp", noise, schedule, T, target)
    net = context.build("network", spec, in_shape=[current * c, h, w], cond_channels=(past + future) * c)
    sampler = context.build("sampler", video_sampler or {"name": "ancestral", "steps": 100})
    return MCVD(process, net, past=past, current=current, future=future, mask=mask, cond=cond,
                value_range=info.value_range, video_sampler=sampler, network_spec=spec)


def consecutive_runs(index: list[int]) -> list[list[int]]:
    """``index`` (increasing) split into runs of consecutive frames."""
    runs: list[list[int]] = []
    for i in index:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
