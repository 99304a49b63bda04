"""The training loop, checkpoint loading and the record of failed trainings (DESIGN.md section 5).

``train`` minimises ``family.loss(x, rng)`` with Adam on mini-batches drawn with a seeded generator;
with ``ema > 0`` it keeps an exponential moving average of the weights,
``e <- e + (1 - d) (p - e)`` with the warm-up decay ``d = min(ema, (1 + step) / (10 + step))``, and
the checkpoint holds both weight sets. Everything random comes from seeds derived from the case
seed, so a training is a pure function of (family, data, train config, seed).

A training that fails (time budget, non-finite loss, a crash) is written to the store under its
training key (kind ``failed-trainings``): every later case that needs that model fails fast with
the same reason instead of training it again, until ``bench run --retry-failed`` clears the record.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .device import autocast, grad_scaler, synchronize
from .errors import CaseFailed
from .rng import BatchRNG, derive_seed
from .store import Store

FAILED_KIND = "failed-trainings"


class TrainingFailedBefore(CaseFailed):
    """The model this case needs failed to train earlier; ``error`` is that failure's record line."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = f"{error} (this model's training failed earlier; `bench run --retry-failed` retrains it)"


def train(family: torch.nn.Module, dataset, cfg: dict[str, Any], seed: int,
          progress: Callable, check_deadline: Callable[[str], None], desc: str = "train",
          device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Train ``family`` (already on ``device``) on ``dataset.split("train")``; returns the checkpoint
    dict (state, ema_state, loss_curve as [step, mean loss since the last point], train_time_s, steps).

    The training split is moved to ``device`` once; batch indices come from a CPU generator (the
    same batches on every device), the training noise from a generator on ``device``. With bf16 or
    fp16 the loss is computed under autocast; fp16 scales it (:func:`bench.device.grad_scaler`),
    unscaling the gradients before clipping. The loss is summed on the device and read once per
    point of the loss curve (every ``log_every`` steps), where a non-finite mean fails the training."""
    data = dataset.split("train")
    if isinstance(data, torch.Tensor):
        data = data.to(device)
    params = [p for p in family.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scaler = grad_scaler(device, precision)
    ema = [p.detach().clone() for p in params] if cfg["ema"] > 0 else None
    gen = torch.Generator().manual_seed(derive_seed(seed, "train-batches"))
    rng = BatchRNG(derive_seed(seed, "train-noise"), cfg["batch_size"], device=device)
    steps = cfg["steps"]
    log_every = cfg["log_every"] or max(1, steps // 200)
    curve: list[list[float]] = []
    running, count = loss_accumulator(device), 0
    family.train()
    start = time.perf_counter()
    bar = progress(range(steps), desc=desc, total=steps)
    for step in bar:
        idx = torch.randint(len(data), (cfg["batch_size"],), generator=gen)
        x = data[idx.to(data.device)] if isinstance(data, torch.Tensor) else data[idx]
        if isinstance(x, torch.Tensor):
            x = x.to(device)  # a no-op when the split is already there
        if cfg["warmup"]:
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"])
        with autocast(device, precision):
            loss = family.loss(x, rng.with_batch(len(x)))
        running += loss.detach().to(running.dtype)  # on the device: no host sync per step
        count += 1
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            opt.step()
        else:  # fp16: the scaler skips a step whose gradients overflowed, and lowers the scale
            scaler.scale(loss).backward()
            if cfg["grad_clip"]:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            scaler.step(opt)
            scaler.update()
        if ema is not None:
            decay = min(cfg["ema"], (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = float(running) / count  # the one host sync of these log_every steps
            if not math.isfinite(mean):
                where = f"step {step}" if count == 1 else f"steps {step + 1 - count}-{step}"
                raise CaseFailed(f"training loss became {mean} at {where}")
            curve.append([step + 1, mean])
            running.zero_()
            count = 0
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
        check_deadline("training")  # every step: a step is the unit of work the budget can stop at
    synchronize(device)
    elapsed = time.perf_counter() - start
    family.eval()
    state = {k: v.detach().clone() for k, v in family.state_dict().items()}
    ema_state = None
    if ema is not None:
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, e in zip(params, ema):
                p.copy_(e)
            ema_state = {k: v.detach().clone() for k, v in family.state_dict().items()}
            for p, s in zip(params, saved):
                p.copy_(s)
    return {"state": state, "ema_state": ema_state, "loss_curve": curve, "train_time_s": elapsed, "steps": steps}


def loss_accumulator(device: str) -> torch.Tensor:
    """A zero on ``device`` that sums the step losses between two points of the loss curve. float64
    (float32 on MPS, which has no float64): the sum of float32 losses rounds exactly as the Python
    float sum bench used before, so CPU loss curves are bit-identical, without the per-step
    ``float(loss)`` that made every step wait for the GPU."""
    dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
    return torch.zeros((), dtype=dtype, device=device)


def load_checkpoint(path: Path, family: torch.nn.Module) -> dict[str, Any]:
    """Load ``path`` into ``family`` and return the checkpoint dict. Raises on any defect (unreadable,
    unsafe, missing fields, wrong keys or shapes); the family's weights are then restored to what
    they were, so that a retraining starts from the same initialisation."""
    before = {k: v.detach().clone() for k, v in family.state_dict().items()}
    try:  # weights_only: a checkpoint is data, never code
        state = torch.load(path, map_location="cpu", weights_only=True)
        float(state["train_time_s"])  # the fields a run reads: a missing or malformed one raises here
        for step, value in state["loss_curve"]:
            int(step), float(value)
        family.load_state_dict(state["ema_state"] if state.get("ema_state") else state["state"])
    except BaseException:
        family.load_state_dict(before)
        raise
    return state


def record_failure(store: Store, key: str, error: str, timeout_s: float | None) -> None:
    """Write that the training ``key`` failed with ``error`` (the case record's error line)."""
    store.put(FAILED_KIND, key, lambda d: (d / "failure.json").write_text(json.dumps(
        {"error": error, "timeout_s": timeout_s, "time_budget": "time budget" in error})))


def earlier_failure(store: Store, key: str, timeout_s: float | None) -> str | None:
    """The error line of an earlier failed training of ``key`` that applies to a case with budget
    ``timeout_s``, else None. A time-budget failure does not apply to a case with a larger budget."""
    entry = store.get(FAILED_KIND, key)
    if entry is None:
        return None
    try:
        info = json.loads((entry / "failure.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("time_budget") and info.get("timeout_s") is not None:
        if timeout_s is None or timeout_s > info["timeout_s"]:
            return None
    return str(info["error"])


def clear_failures(store: Store, keys) -> int:
    """Forget the failed trainings among ``keys`` (``--retry-failed``); returns how many there were."""
    cleared = 0
    for key in set(keys):
        if store.get(FAILED_KIND, key) is not None:
            store.remove(FAILED_KIND, key)
            cleared += 1
    return cleared
