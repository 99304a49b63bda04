"""The training loop, checkpoint loading and the record of failed trainings (DESIGN.md section 5).

``train`` minimises ``family.loss(x, rng)`` (``family.loss(x, rng, labels=y)`` with the class labels
y when the family sets ``wants_labels``) with Adam on mini-batches drawn with a seeded generator;
with ``ema > 0`` it keeps an exponential moving average of the weights,
``e <- e + (1 - d) (p - e)`` with the warm-up decay ``d = min(ema, (1 + step) / (10 + step))``, and
the checkpoint holds both weight sets. Everything random comes from seeds derived from the case
seed, so a training is a pure function of (family, data, train config, seed).

A training that fails (time budget, non-finite loss, a crash) is written to the store under its
training key (kind ``failed-trainings``): every later case that needs that model fails fast with
the same reason instead of training it again, until ``bench run --retry-failed`` clears the record.
A time-budget failure of a training whose saved state (``train.checkpoint_every``,
:mod:`bench.train_state`) advanced since its previous failure is recorded as resumable: it blocks
nothing, and the next ``bench run`` resumes it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .batches import batches
from .device import autocast, grad_scaler, synchronize
from .errors import CaseFailed
from .rng import BatchRNG, derive_seed
from .store import Store
from .train_state import Start, capture, restore, saved_step

FAILED_KIND = "failed-trainings"


class TrainingFailedBefore(CaseFailed):
    """The model this case needs failed to train earlier; ``error`` is that failure's record line."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = f"{error} (this model's training failed earlier; `bench run --retry-failed` retrains it)"


def train(family: torch.nn.Module, dataset, cfg: dict[str, Any], seed: int,
          progress: Callable, check_deadline: Callable[[str], None], desc: str = "train",
          device: str = "cpu", precision: str = "fp32", start: Start | None = None,
          save: Callable[[dict[str, Any], bool], None] | None = None) -> dict[str, Any]:
    """Train ``family`` (already on ``device``) on the dataset's training split; returns the checkpoint
    dict (state, ema_state, loss_curve as [step, mean loss since the last point], train_time_s, steps).

    Batches come from :func:`bench.batches.batches` (a DataLoader with ``cfg["num_workers"]``
    workers; indices from a seeded CPU generator: the same batches on every device and with any
    number of workers), with labels ``loss(x, rng, labels=y)`` when ``family.wants_labels``; the
    training noise comes from a generator on ``device``. With bf16 or
    fp16 the loss is computed under autocast; fp16 scales it (:func:`bench.device.grad_scaler`),
    unscaling the gradients before clipping. The loss is summed on the device and read once per
    point of the loss curve (every ``log_every`` steps), where a non-finite mean fails the training.

    ``start``: a saved state to continue from (:mod:`bench.train_state`); ``save(state, finished)``
    is called with the resumable state every ``checkpoint_every`` steps and after the last step. The
    batches of a resumed training are those of steps ``start.step`` onwards of a straight run
    (:func:`bench.batches.batches` with ``start``), so no batch generator state is saved."""
    params = [p for p in family.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scaler = grad_scaler(device, precision)
    ema = [p.detach().clone() for p in params] if cfg["ema"] > 0 else None
    rng = BatchRNG(derive_seed(seed, "train-noise"), cfg["batch_size"], device=device)
    steps = cfg["steps"]
    log_every = cfg["log_every"] or max(1, steps // 200)
    curve: list[list[float]] = []
    running, count = loss_accumulator(device), 0
    generators = {"noise": rng.generator}
    first, before = 0, 0.0
    if start is not None:
        restore(start.state, family, ema, opt, scaler, generators)
        first, before = start.step, float(start.state["train_time_s"])
        curve, count = [list(p) for p in start.state["curve"]], start.state["count"]
        running.fill_(float(start.state["running"]))  # float64: the partial sum exactly as it was
    train_batches = batches(dataset, family, cfg, seed, device, start=first)
    every = cfg.get("checkpoint_every") if save is not None else None
    family.train()
    t0 = time.perf_counter()

    def snapshot(done: int) -> dict[str, Any]:
        return capture(done, family, ema, opt, scaler, generators, curve, float(running), count,
                       before + time.perf_counter() - t0)

    bar = progress(range(first, steps), desc=desc, total=steps - first)
    for step in bar:
        x, y = next(train_batches)
        if cfg["warmup"]:
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"])
        with autocast(device, precision):
            loss = family.loss(x, rng.with_batch(len(x)), **({} if y is None else {"labels": y}))
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
        if every and (step + 1) % every == 0 and step + 1 < steps:
            save(snapshot(step + 1), False)
        check_deadline("training")  # every step: a step is the unit of work the budget can stop at
    synchronize(device)
    elapsed = before + time.perf_counter() - t0
    if every:
        save(snapshot(steps), True)
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
    """Write that the training ``key`` failed with ``error`` (the case record's error line). A
    time-budget failure is ``resumable`` when the training's saved state advanced since the previous
    failure (or there was none): the next run resumes it instead of failing at once."""
    time_budget = "time budget" in error
    step = saved_step(store, key) if time_budget else None
    previous = _failure_info(store, key) or {}
    resumable = step is not None and (previous.get("progress_step") is None or step > previous["progress_step"])
    store.put(FAILED_KIND, key, lambda d: (d / "failure.json").write_text(json.dumps(
        {"error": error, "timeout_s": timeout_s, "time_budget": time_budget, "progress_step": step,
         "resumable": resumable})))


def _failure_info(store: Store, key: str) -> dict[str, Any] | None:
    entry = store.get(FAILED_KIND, key)
    if entry is None:
        return None
    try:
        return json.loads((entry / "failure.json").read_text())
    except (OSError, ValueError):
        return None


def earlier_failure(store: Store, key: str, timeout_s: float | None) -> str | None:
    """The error line of an earlier failed training of ``key`` that applies to a case with budget
    ``timeout_s``, else None. A time-budget failure does not apply to a case with a larger budget,
    nor a resumable one (:func:`record_failure`) to any case."""
    info = _failure_info(store, key)
    if info is None or info.get("resumable"):
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
