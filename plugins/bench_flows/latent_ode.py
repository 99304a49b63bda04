"""``latent_ode``: video with a neural ODE in latent space (flows-math.md section 4, thesis ch. 3).

Frames x_i at times t_i = i * ``frame_dt``. Context frames C (the first half for ``extrapolation``,
the even frames for ``interpolation``), targets the others. Latent trajectory (section 4.1):

    z(t) = z_0 + int_{t_0}^{t} f_theta(z(s), s) ds  at a vector of output times (one solve),
    x^(t) = p_psi(z(t))   (per-frame decoder).

``deterministic`` (Fig. 3.1a, eq. 3.4.1): z_0 = q_phi(x_{t_0}) from a per-frame encoder;

    L = mean_{i in C} ||x_i - p_psi(z(t_i))||^2 + w_lat * mean_{i in C} ||q_phi(x_i) - z(t_i)||^2.

``vae`` (Fig. 3.1b, eq. 3.4.2): a GRU reads the context frames' encodings from last to first and gives
q(z_0 | C) = N(mu, diag sigma^2); z_0 = mu + sigma eps; per context pixel,

    L = ( sum_{i in C} -log N(x_i; p_psi(z(t_i)), s^2 I) + w_KL KL(q || N(0, I)) ) / (|C| H W C).

Training uses the context frames only (reconstruction, thesis section 3.5.4); targets are reached by
solving past (extrapolation) or between (interpolation) the context times. Evaluation uses z_0 = mu.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from .nfe import NFEBookkeeping
from .odesolve import SolverConfig, SolverName, solve
from .video_nets import FrameDecoder, FrameEncoder, LatentDynamics

Pos = Annotated[float, Field(gt=0)]


class LatentODE(NFEBookkeeping):
    trainable = True

    def __init__(self, variant: Literal["deterministic", "vae"] = "deterministic",
                 task: Literal["extrapolation", "interpolation"] = "extrapolation",
                 latent_dim: Annotated[int, Field(gt=0)] = 16,
                 channels: tuple[Annotated[int, Field(gt=0)], ...] = (16, 32, 64),
                 ode_hidden: tuple[Annotated[int, Field(gt=0)], ...] = (64, 64),
                 rnn_hidden: Annotated[int, Field(gt=0)] = 64,
                 frame_dt: Pos = 0.1, solver: SolverName = "rk4", atol: Pos = 1e-4, rtol: Pos = 1e-4,
                 step_size: Optional[Pos] = 0.05, adjoint: bool = False,
                 latent_weight: Annotated[float, Field(ge=0)] = 1.0, kl_weight: Annotated[float, Field(ge=0)] = 1.0,
                 obs_std: Pos = 1.0, context=None):
        super().__init__()
        frames, c, h, w = context.data.shape
        if h != w:
            raise ValueError("latent_ode expects square frames")
        self.variant, self.task = variant, task
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
        self.solver = SolverConfig(solver, atol, rtol, step_size, adjoint)
        self.latent_weight, self.kl_weight, self.obs_std = latent_weight, kl_weight, obs_std
        enc_dim = latent_dim if variant == "deterministic" else rnn_hidden
        self.encoder = FrameEncoder(c, h, list(channels), enc_dim)
        self.decoder = FrameDecoder(c, h, list(channels), latent_dim)
        self.dynamics = LatentDynamics(latent_dim, list(ode_hidden))
        if variant == "vae":
            self.rnn = nn.GRU(rnn_hidden, rnn_hidden, batch_first=True)
            self.posterior = nn.Linear(rnn_hidden, 2 * latent_dim)
        self.latent_dim = latent_dim
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
        enc = self.encoder(context.flatten(0, 1)).view(b, n, -1)
        if self.variant == "deterministic":
            return enc[:, 0], None, enc
        _, hidden = self.rnn(enc.flip(1))  # read from the last context frame back to the first
        mu, logvar = self.posterior(hidden[-1]).chunk(2, dim=1)
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
        b, n = zs.shape[:2]
        return self.decoder(zs.flatten(0, 1)).view(b, n, *self.frame_shape)

    # ------------------------------------------------------------------ protocol
    def loss(self, x: torch.Tensor, rng) -> torch.Tensor:
        self._ensure_hooks()
        start = self._calls
        context = x[:, self.context_index]
        mu, logvar, enc = self.encode(context)
        t_ctx = self.times(self.context_index)
        if self.variant == "deterministic":
            zs = self.latent_path(mu, float(t_ctx[0]), t_ctx)
            recon = self.decode(zs)
            loss = (recon - context).pow(2).mean() + self.latent_weight * (enc - zs).pow(2).mean()
        else:
            z0 = mu + (0.5 * logvar).exp() * rng.randn(self.latent_dim)
            recon = self.decode(self.latent_path(z0, float(t_ctx[0]), t_ctx))
            nll = (0.5 * ((recon - context) / self.obs_std).pow(2)
                   + 0.5 * math.log(2 * math.pi * self.obs_std ** 2)).flatten(1).sum(1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = ((nll + self.kl_weight * kl) / context[0].numel()).mean()
        self._record_step(start)
        return loss

    @torch.no_grad()
    def predict_at(self, context: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Frames at the sorted output ``times`` from the context frames (extrapolation or
        interpolation through a vector of output times); z_0 = mu for the VAE."""
        self._ensure_hooks()
        mu, _, _ = self.encode(context)
        t0 = float(self.times(self.context_index)[0])
        return self.decode(self.latent_path(mu, t0, times)).clamp(-1, 1)

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
        frames = self.decode(self.latent_path(mu, float(self.times(ci[:1])), self.times(order))).clamp(-1, 1)
        at = {t: j for j, t in enumerate(order)}
        return frames[:, [at[t] for t in ci]], frames[:, [at[t] for t in ti]]

    def describe(self) -> dict[str, Any]:
        return {"family": "latent_ode", "variant": self.variant, "task": self.task,
                "context_frames": [i + 1 for i in self.context_index],
                "target_frames": [i + 1 for i in self.target_index], "frame_dt": self.frame_dt,
                "solver": self.solver.as_dict(), **self.nfe_stats()}

    def train_stats(self) -> dict[str, float]:
        return self.nfe_stats()
