"""The ``diffusers`` family: a pretrained diffusers ``UNet2DModel`` as a frozen discrete VP family.

A diffusers checkpoint trained with ``T = num_train_timesteps`` betas beta_0..beta_{T-1} (0-based)
predicts, at integer timestep k, from x_k = sqrt(alpha_bar_k) x_0 + sqrt(1 - alpha_bar_k) eps
(alpha_bar_k = prod_{j<=k} (1 - beta_j); ddpm-basics.md section 1) one of (``prediction_type``)

- ``epsilon``: eps                                  -> bench ``prediction: eps``;
- ``sample``: x_0                                   -> bench ``prediction: x0``;
- ``v_prediction``: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho)
                                                    -> bench ``prediction: v`` (the same v, Sigma = I).

bench's discrete VP process (diffusion-math.md section 4) numbers its levels i = 1..T at t_i = i / T,
so diffusers' timestep k is bench's level i = k + 1 and the network gets k = t T - 1 (a float off the
grid: the sinusoidal embedding is defined for any real k, and SDE/ODE samplers ask for such times).
The betas are diffusers' own (computed by its ``DDPMScheduler`` from the scheduler config, the float32
values the checkpoint was trained with), carried to float64; noise is isotropic (Sigma = I).

The family is frozen (``trainable = False``, no parameter requires a gradient): bench skips training.
diffusers is imported only when the family is built (``pip install bench[diffusers]``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import DirectoryPath, Field, FilePath
from torch import nn

from bench.errors import UserError

from .families import DiffusionFamily
from .noise import Isotropic
from .processes import Process, VPProcess
from .schedules import VPSchedule

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def import_diffusers(what: str) -> Any:
    """diffusers, or a one-line UserError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise UserError(f"{what} needs the optional dependency diffusers",
                        hint="pip install 'bench[diffusers]'") from None
    return diffusers


class BetaTable(VPSchedule):
    """A VP schedule given by its table of T betas (discrete only: a process built on it is discrete,
    and its continuous form is the process's interpolation through the table)."""

    name = "table"

    def __init__(self, betas: np.ndarray, source: str):
        self.table = np.asarray(betas, np.float64)
        if self.table.ndim != 1 or not np.all((self.table > 0) & (self.table < 1)):
            raise UserError(f"{source}: the betas must be a list of numbers in (0, 1)")
        self.source = source

    def betas(self, T: int) -> np.ndarray:
        if T != len(self.table):
            raise ValueError(f"this schedule has {len(self.table)} betas; asked for T = {T}")
        return self.table.copy()

    def _knots(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log alpha_bar at the levels k = 0..T (t_k = k / T, log alpha_bar(0) = 0), the segment index
        of ``t`` and its fractional position in that segment."""
        T = len(self.table)
        knots = torch.as_tensor(np.concatenate([[0.0], np.cumsum(np.log1p(-self.table))]), dtype=torch.float64)
        u = (t.double().clamp(0, 1) * T)
        k = u.floor().clamp(max=T - 1).long()
        return knots.to(t.device), k, u - k

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation of log alpha_bar through the table: exact at t = k / T."""
        knots, k, frac = self._knots(t)
        return (knots[k] + frac * (knots[k + 1] - knots[k])).to(t.dtype)

    def dlog_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Slope of :meth:`log_alpha_bar` on the segment holding t: T log(1 - beta_{k+1})."""
        knots, k, _ = self._knots(t)
        return (len(self.table) * (knots[k + 1] - knots[k])).to(t.dtype)

    def params(self) -> dict[str, Any]:
        return {"source": self.source, "T": len(self.table), "beta_first": float(self.table[0]),
                "beta_last": float(self.table[-1])}


def locate(path: str, scheduler: str | None) -> tuple[Path, Path]:
    """(model directory, scheduler config file) for ``path`` (a save_pretrained pipeline directory
    with ``unet/`` and ``scheduler/``, or a model directory) and an optional scheduler config path
    (a ``scheduler_config.json`` or the directory holding it). One-line errors name what is missing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"diffusers family: {root} is not a directory")
    model_dir = root / "unet" if (root / "unet").is_dir() else root
    if not (model_dir / "config.json").is_file():
        raise UserError(f"diffusers family: {root} has neither unet/config.json nor config.json "
                        "(expected a save_pretrained layout)")
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"diffusers family: {model_dir} has no weights file ({' or '.join(WEIGHT_FILES)})")
    if scheduler is not None:
        sched = Path(scheduler).expanduser()
        sched = sched / "scheduler_config.json" if sched.is_dir() else sched
    else:
        sched = root / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        raise UserError(f"diffusers family: missing scheduler config {sched} "
                        "(give a pipeline directory with scheduler/, or the scheduler parameter)")
    return model_dir, sched


def read_scheduler_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"diffusers family: {path} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"diffusers family: {path} must hold a JSON object")
    return cfg


def diffusers_betas(cfg: dict[str, Any], source: str) -> np.ndarray:
    """The T betas diffusers derives from a scheduler config (its float32 values, as float64)."""
    diffusers = import_diffusers("the diffusers family")
    if cfg.get("rescale_betas_zero_snr"):
        raise UserError(f"{source}: rescale_betas_zero_snr makes alpha_bar_T = 0, which a VP process with "
                        "sigma < 1 cannot represent")
    kw = {"num_train_timesteps": int(cfg.get("num_train_timesteps", 1000))}
    if cfg.get("trained_betas") is not None:
        kw["trained_betas"] = cfg["trained_betas"]
    else:
        schedule = cfg.get("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            raise UserError(f"{source}: beta_schedule {schedule!r} is not supported (use one of "
                            f"{', '.join(BETA_SCHEDULES)}, or trained_betas)")
        kw.update(beta_schedule=schedule, beta_start=float(cfg.get("beta_start", 1e-4)),
                  beta_end=float(cfg.get("beta_end", 0.02)))
    return diffusers.DDPMScheduler(**kw).betas.double().numpy()


class FrozenUNet(nn.Module):
    """``net(x, k)``: a diffusers UNet2DModel's output at (float) timesteps k (one network call),
    with a fixed class label for class-conditional models."""

    def __init__(self, unet: nn.Module, class_label: int | None):
        super().__init__()
        self.unet = unet
        self.class_label = class_label

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        labels = None
        if self.class_label is not None:
            labels = torch.full((x.shape[0],), self.class_label, dtype=torch.long, device=x.device)
        dtype = self.unet.dtype
        out = self.unet(x.to(dtype), k.to(x.device), class_labels=labels).sample
        return out.to(x.dtype)


class PretrainedFamily(DiffusionFamily):
    """A frozen diffusers UNet on bench's discrete VP process (see the module docstring)."""

    trainable = False

    def __init__(self, process: Process, net: FrozenUNet, prediction: str, provenance: dict[str, Any], **kw: Any):
        super().__init__(process, net, name="diffusers", prediction=prediction, **kw)
        self.provenance = provenance
        net.requires_grad_(False)
        net.eval()

    def time_input(self, t: Any, batch: int, device=None) -> torch.Tensor:
        """diffusers' timestep k = t T - 1 (level i = k + 1 at t = i / T); integers on the grid."""
        T = self.process.T
        t = torch.as_tensor(t, dtype=torch.float64)
        k = t * T - 1.0
        near = torch.round(k)
        k = torch.where((k - near).abs() < 1e-6, near, k)
        k = k.expand(batch) if k.dim() == 0 else k
        return k.float().to(device) if device is not None else k.float()

    def train(self, mode: bool = True) -> "PretrainedFamily":
        return super().train(False)  # frozen: dropout etc. stay in eval mode

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "network_time_input": "t T - 1 (diffusers' 0-based timestep)",
                "pretrained": self.provenance}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def diffusers_family(path: DirectoryPath, scheduler: FilePath | DirectoryPath | None = None,
                     class_label: Annotated[int, Field(ge=0)] | None = None, context=None) -> PretrainedFamily:
    """A pretrained diffusers ``UNet2DModel`` (local ``path``: a save_pretrained directory with
    ``unet/`` and ``scheduler/``, or a model directory plus ``scheduler``, a scheduler config path)
    as a frozen VP family; ``class_label`` picks the class of a class-conditional model. A missing
    ``path`` fails suite validation (file:line); a directory without what it needs fails the case
    with one line naming it."""
    model_dir, sched_path = locate(str(path), None if scheduler is None else str(scheduler))
    cfg = read_scheduler_config(sched_path)
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise UserError(f"diffusers family: {sched_path}: prediction_type {pred!r} is not one of "
                        f"{', '.join(PREDICTIONS)}")
    betas = diffusers_betas(cfg, str(sched_path))
    diffusers = import_diffusers("the diffusers family")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(model_dir), local_files_only=True,
                                                     low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"diffusers family: cannot load a UNet2DModel from {model_dir}: {first}") from None
    ucfg = unet.config
    if ucfg.time_embedding_type != "positional":
        raise UserError(f"diffusers family: {model_dir}: time_embedding_type {ucfg.time_embedding_type!r} "
                        "is not supported (a VP model uses 'positional')")
    size = ucfg.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(ucfg.in_channels), *map(int, hw))
    if ucfg.out_channels != ucfg.in_channels:
        raise UserError(f"diffusers family: {model_dir}: out_channels {ucfg.out_channels} != in_channels "
                        f"{ucfg.in_channels} (learned-variance outputs are not supported)")
    n_classes = ucfg.num_class_embeds
    if n_classes is not None and class_label is None:
        raise UserError(f"diffusers family: {model_dir} is class-conditional ({n_classes} classes): "
                        "give class_label")
    if class_label is not None and (n_classes is None or not 0 <= class_label < n_classes):
        raise UserError(f"diffusers family: class_label {class_label} is out of range for {model_dir} "
                        f"({'unconditional' if n_classes is None else f'{n_classes} classes'})")
    info = getattr(context, "data", None)
    if info is not None and tuple(info.shape) != shape:
        raise UserError(f"diffusers family: {model_dir} generates samples of shape {list(shape)} but the "
                        f"dataset's shape is {list(info.shape)}")
    process = VPProcess(BetaTable(betas, str(sched_path)), Isotropic(shape), shape, T=len(betas))
    weights = next(model_dir / f for f in WEIGHT_FILES if (model_dir / f).is_file())
    provenance = {"path": str(path), "model_dir": str(model_dir), "scheduler_config": str(sched_path),
                  "prediction_type": pred, "num_train_timesteps": len(betas),
                  "beta_schedule": "trained_betas" if cfg.get("trained_betas") is not None
                  else cfg.get("beta_schedule", "linear"),
                  "weights": weights.name, "weights_sha256": _sha256(weights),
                  "num_params": int(sum(p.numel() for p in unet.parameters())),
                  "num_class_embeds": n_classes, "class_label": class_label}
    return PretrainedFamily(process, FrozenUNet(unet, class_label), PREDICTIONS[pred], provenance,
                            value_range=getattr(info, "value_range", None), levels=getattr(info, "levels", None),
                            network_spec={"name": "diffusers.UNet2DModel", "path": str(model_dir)})
