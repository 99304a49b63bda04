"""``latent_ode``: video with a neural ODE in latent space (flows-math.md section 4, thesis ch. 3).

Frames x_i at times t_i = i * ``frame_dt``. Context frames C (the first half for ``extrapolation``,
the even frames for ``interpolation``), targets the others. Latent trajectory (section 4.1):

    z(t) = z_0 + int_{t_0}^{t} f_theta(z(s), s) ds  at a vector of output times (one solve),
    x^(t) = p_psi(z(t))   (per-frame decoder).

Encoder (``encoder``), z_0 at t_0, the first context frame's time:

- ``frame``: a conv net on the first context frame alone (thesis Fig. 3.1a);
- ``stack``: a conv net on the first ``encoder_frames`` context frames stacked as channels, so z_0
  sees the motion, not only the position;
- ``gru``: per-frame conv encodings read by a GRU from the last context frame back to the first
  (thesis Fig. 3.1b; Rubanova et al. 2019 read backwards so the state ends at t_0).

Pixel likelihood (``likelihood``), per pixel u = (x + 1) / 2 in [0, 1], decoder output d:

- ``gaussian``: -log N(x; d, s^2) (s = ``obs_std``); the prediction is d clamped to [-1, 1];
- ``bernoulli``: d is a logit, -log p = -(u log sigma(d) + (1 - u) log(1 - sigma(d))) (the
  cross-entropy of a [0, 1] target, exact Bernoulli NLL at u in {0, 1}); the prediction is the mean
  2 sigma(d) - 1. On the mostly black frames its gradient at the background does not vanish the way
  a fixed-variance Gaussian's does once the output is near the average frame.
  The last layer's bias starts at ``BERNOULLI_INIT_LOGIT`` (-3, a dark frame: the data are mostly black).

Losses over the reconstructed frames R (``train_frames``: ``context`` = C, the thesis's
reconstruction-only training, section 3.5.4; ``all`` = every frame of the training clip, so the
dynamics are also fitted past the context), D = pixels per frame:

``deterministic`` (eq. 3.4.1): z_0 = q_phi(C),

    L = mean_{i in R} NLL(x_i | p_psi(z(t_i))) / D + w_lat * mean_{i in C} ||q_phi(x_i) - z(t_i)||^2

(the Gaussian NLL with s^2 = 1/2, up to its constant: the thesis's mean squared error; the latent
term needs ``encoder: frame``, the only one with per-frame encodings).

``vae`` (eq. 3.4.2): q(z_0 | C) = N(mu, diag sigma^2), z_0 = mu + sigma eps, per pixel of R,

    L = ( sum_{i in R} NLL(x_i | p_psi(z(t_i))) + w_KL(step) KL(q || N(0, I)) ) / (|R| D),

w_KL rising linearly from 0 to ``kl_weight`` over the first ``kl_warmup`` training steps (KL
annealing). Evaluation uses z_0 = mu.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .nfe import NFEBookkeeping
from .odesolve import SolverConfig, SolverName, solve
from .video_nets import FrameDecoder, FrameEncoder, LatentDynamics

Pos = Annotated[float, Field(gt=0)]
BERNOULLI_INIT_LOGIT = -3.0


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel -[u log sigma(d) + (1 - u) log(1 - sigma(d))], u = (x + 1) / 2 (x in [-1, 1])."""
    u = (x + 1) / 2
    return F.softplus(logits) - u * logits  # = -u log sigma(d) - (1 - u) log sigma(-d), stable


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
    """Per-pixel -log N(x; mean, std^2)."""
    return 0.5 * ((x - mean) / std).pow(2) + 0.5 * math.log(2 * math.pi * std ** 2)


class LatentODE(NFEBookkeeping):
    trainable = True

    def __init__(self, variant: Literal["deterministic", "vae"] = "deterministic",
                 task: Literal["extrapolation", "interpolation"] = "extrapolation",
                 latent_dim: Annotated[int, Field(gt=0)] = 16,
                 channels: tuple[Annotated[int, Field(gt=0)], ...] = (16, 32, 64),
                 ode_hidden: tuple[Annotated[int, Field(gt=0)], ...] = (64, 64),
                 rnn_hidden: Annotated[int, Field(gt=0)] = 64,
                 encoder: Optional[Literal["frame", "stack", "gru"]] = None,
                 encoder_frames: Optional[Annotated[int, Field(gt=0)]] = None,
                 likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
                 train_frames: Literal["context", "all"] = "all",
                 frame_dt: Pos = 0.1, solver: SolverName = "rk4", atol: Pos = 1e-4, rtol: Pos = 1e-4,
                 step_size: Optional[Pos] = 0.05, adjoint: bool = False,
                 latent_weight: Annotated[float, Field(ge=0)] = 0.0, kl_weight: Annotated[float, Field(ge=0)] = 1.0,
                 kl_warmup: Annotated[int, Field(ge=0)] = 0,
                 obs_std: Pos = 1.0, context=None):
        super().__init__()
        frames, c, h, w = context.data.shape
        if h != w:
            raise ValueError("latent_ode expects square frames")
        encoder = encoder or ("stack" if variant == "deterministic" else "gru")
        if latent_weight > 0 and (variant != "deterministic" or encoder != "frame"):
            raise ValueError("latent_weight > 0 needs variant: deterministic with encoder: frame "
                             "(the latent term compares per-frame encodings with the ODE path)")
        self.variant, self.task, self.encoder_kind = variant, task, encoder
        self.likelihood, self.train_frames = likelihood, train_frames
        self.frame_shape = (c, h, w)
        self.frames = frames
        self.frame_dt = frame_dt
        half = frames // 2
        if task == "extrapolation":
            self.context_index = list(range(half))
            self.target_index = list(range(half, frames))
        else:
            self.context_index = list(range(0, frames, 2))
            self.target_index = list(range(1, frames, 2))
        self.encoder_frames = 1 if encoder != "stack" else min(encoder_frames or len(self.context_index),
                                                               len(self.context_index))
        if encoder == "stack" and encoder_frames is not None and encoder_frames > len(self.context_index):
            raise ValueError(f"encoder_frames {encoder_frames} exceeds the {len(self.context_index)} context frames")
        self.solver = SolverConfig(solver, atol, rtol, step_size, adjoint)
        self.latent_weight, self.kl_weight, self.kl_warmup, self.obs_std = latent_weight, kl_weight, kl_warmup, obs_std
        out_dim = latent_dim * (1 if variant == "deterministic" else 2)
        # construction order kept from the two original configurations (frame/deterministic, gru/vae),
        # so their initial weights under a seed are unchanged
        enc_dim = rnn_hidden if encoder == "gru" else out_dim
        self.encoder = FrameEncoder(c * self.encoder_frames, h, list(channels), enc_dim)
        self.decoder = FrameDecoder(c, h, list(channels), latent_dim)
        if likelihood == "bernoulli":  # start from a dark frame, sigma(-3) = 0.05, as the data mostly are
            nn.init.constant_(self.decoder.deconvs[-1].bias, BERNOULLI_INIT_LOGIT)
        self.dynamics = LatentDynamics(latent_dim, list(ode_hidden))
        if encoder == "gru":
            self.rnn = nn.GRU(rnn_hidden, rnn_hidden, batch_first=True)
            self.posterior = nn.Linear(rnn_hidden, out_dim)
        self.latent_dim = latent_dim
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self._init_nfe(adjoint)

    # ------------------------------------------------------------------ pieces
    def nets(self) -> list[nn.Module]:
        return [self.dynamics.net]

    def nfe_modules(self) -> list[nn.Module]:
        return self.nets()

    def times(self, index: list[int]) -> torch.Tensor:
        return torch.tensor(index, dtype=torch.float32) * self.frame_dt

    def encode(self, context: torch.Tensor):
        """Context frames (B, n, C, H, W) -> (mu, logvar or None, per-frame encodings or None)."""
        b, n = context.shape[:2]
        if self.encoder_kind == "gru":
            enc = self.encoder(context.flatten(0, 1)).view(b, n, -1)
            _, hidden = self.rnn(enc.flip(1))  # read from the last context frame back to the first
            out, per_frame = self.posterior(hidden[-1]), None
        elif self.encoder_kind == "stack":
            if n < self.encoder_frames:
                raise ValueError(f"the stacked encoder reads {self.encoder_frames} context frames, got {n}")
            out, per_frame = self.encoder(context[:, :self.encoder_frames].flatten(1, 2)), None
        else:
            per_frame = self.encoder(context.flatten(0, 1)).view(b, n, -1)
            out = per_frame[:, 0]
        if self.variant == "deterministic":
            return out, None, per_frame
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar, None

    def latent_path(self, z0: torch.Tensor, t0: float, times: torch.Tensor) -> torch.Tensor:
        """z at the sorted output ``times`` (>= t0), one solve from z0 at t0: (B, len(times), latent)."""
        grid = torch.cat([torch.tensor([t0]), times]) if times[0] > t0 else times
        zs = solve(self.dynamics, z0, grid, self.solver,
                   adjoint_params=tuple(self.dynamics.parameters()))
        if times[0] > t0:
            zs = zs[1:]
        return zs.transpose(0, 1)

    def decode(self, zs: torch.Tensor) -> torch.Tensor:
        """Latents (B, n, latent) -> decoder outputs (B, n, C, H, W): means (gaussian) or logits (bernoulli)."""
        b, n = zs.shape[:2]
        return self.decoder(zs.flatten(0, 1)).view(b, n, *self.frame_shape)

    def frames_of(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder outputs -> predicted frames in [-1, 1] (the likelihood's mean)."""
        return out.clamp(-1, 1) if self.likelihood == "gaussian" else 2 * torch.sigmoid(out) - 1

    def pixel_nll(self, out: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
        if self.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        return gaussian_nll(out, x, std)

    def kl_scale(self) -> float:
        """w_KL at the current training step (linear warm-up over ``kl_warmup`` steps)."""
        if self.kl_warmup == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, float(self.train_step) / self.kl_warmup)

    # ------------------------------------------------------------------ protocol
    def loss(self, x: torch.Tensor, rng) -> torch.Tensor:
        self._ensure_hooks()
        start = self._calls
        context = x[:, self.context_index]
        fit = self.context_index if self.train_frames == "context" else list(range(x.shape[1]))
        target = x[:, fit]
        mu, logvar, enc = self.encode(context)
        t0 = float(self.times(self.context_index[:1]))
        if self.variant == "deterministic":
            zs = self.latent_path(mu, t0, self.times(fit))
            out = self.decode(zs)
            if self.likelihood == "gaussian":
                loss = (out - target).pow(2).mean()  # the thesis's L2 (eq. 3.4.1), per pixel
            else:
                loss = bernoulli_nll(out, target).mean()
            if self.latent_weight > 0:
                at = [fit.index(i) for i in self.context_index]
                loss = loss + self.latent_weight * (enc - zs[:, at]).pow(2).mean()
        else:
            z0 = mu + (0.5 * logvar).exp() * rng.randn(self.latent_dim)
            out = self.decode(self.latent_path(z0, t0, self.times(fit)))
            nll = self.pixel_nll(out, target, self.obs_std).flatten(1).sum(1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = ((nll + self.kl_scale() * kl) / target[0].numel()).mean()
        if self.training and torch.is_grad_enabled():
            self.train_step += 1
        self._record_step(start)
        return loss

    @torch.no_grad()
    def predict_at(self, context: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Frames at the sorted output ``times`` from the context frames (extrapolation or
        interpolation through a vector of output times); z_0 = mu for the VAE."""
        self._ensure_hooks()
        mu, _, _ = self.encode(context)
        t0 = float(self.times(self.context_index)[0])
        return self.frames_of(self.decode(self.latent_path(mu, t0, times)))

    #: the ``video`` metric's tasks (bench_metrics/video.py): the ODE runs forward from the first
    #: context frame, so it predicts and interpolates, and does not do past prediction or generation
    video_tasks = ("predict", "interpolate")

    @torch.no_grad()
    def reconstruct_and_predict(self, context: torch.Tensor, context_index, target_index,
                                rng=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The video convention (bench_metrics/video.py): ``context`` (B, n_c, C, H, W) holds the frames
        at the increasing indices ``context_index``; returns their reconstruction and the frames at
        ``target_index`` (each after the first context frame). z_0 = q(context) at t(context_index[0])
        (mu for the VAE), then one solve through the times of both index sets."""
        ci, ti = list(context_index), list(target_index)
        if ti and min(ti) <= ci[0]:
            raise ValueError(f"latent_ode predicts forward from its first context frame ({ci[0] + 1}), "
                             f"asked for frame {min(ti) + 1}")
        self._ensure_hooks()
        mu, _, _ = self.encode(context)
        order = sorted(set(ci) | set(ti))
        frames = self.frames_of(self.decode(self.latent_path(mu, float(self.times(ci[:1])), self.times(order))))
        at = {t: j for j, t in enumerate(order)}
        return frames[:, [at[t] for t in ci]], frames[:, [at[t] for t in ti]]

    def describe(self) -> dict[str, Any]:
        return {"family": "latent_ode", "variant": self.variant, "task": self.task,
                "encoder": self.encoder_kind, "encoder_frames": self.encoder_frames,
                "likelihood": self.likelihood, "train_frames": self.train_frames,
                "context_frames": [i + 1 for i in self.context_index],
                "target_frames": [i + 1 for i in self.target_index], "frame_dt": self.frame_dt,
                "solver": self.solver.as_dict(), **self.nfe_stats()}

    def train_stats(self) -> dict[str, float]:
        return self.nfe_stats()
