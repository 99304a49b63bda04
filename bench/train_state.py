"""Resumable training state (``train.checkpoint_every``) and where a training starts from.

The state after step k is everything the steps after it read: the family's ``state_dict``, the EMA
weights, Adam's state, the fp16 grad scaler, the random generators (batch indices, training noise,
torch's global generator, CUDA's on a GPU), the loss-curve accumulator and the training time so far.
Restoring it and running steps k..S-1 gives the bits of an uninterrupted run of S steps on the same
device with the same threads: no step reads the total S (the learning-rate warm-up
``lr min(1, (t+1)/warmup)`` and the EMA warm-up ``min(ema, (1+t)/(10+t))`` count from step 0), except
the default loss-curve interval ``log_every = max(1, S // 200)`` (DESIGN.md section 5).

In the store (kind ``train-progress``) a training has two slots; a save overwrites the older one, so
a kill during a save leaves the newer one whole. A training that sets ``checkpoint_every`` leaves its
final state (step == steps) in a slot: a training of the same lineage (everything but ``steps`` equal,
:attr:`bench.suite.Case.lineage_key`) with more steps starts from it, its parent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .store import Store, content_key

KIND = "train-progress"
FILE = "state.pt"
FORMAT = 1
_SLOTS = (0, 1)


@dataclass
class Start:
    """A saved state to train from: ``step`` steps done, of the training ``train_key`` (this
    training's own key when it resumes, its parent's when it continues a shorter one)."""

    state: dict[str, Any]
    step: int
    train_key: str


def capture(step: int, family: torch.nn.Module, ema: Sequence[torch.Tensor] | None, opt: torch.optim.Optimizer,
            scaler: Any, generators: dict[str, torch.Generator], curve: list, running: float, count: int,
            train_time_s: float) -> dict[str, Any]:
    """The resumable state after ``step`` steps (tensors shared with the live objects: save it at once)."""
    rng = {name: g.get_state() for name, g in generators.items()}
    rng["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": FORMAT, "step": step, "model": family.state_dict(),
            "ema": None if ema is None else list(ema), "optimizer": opt.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(), "rng": rng,
            "curve": [list(p) for p in curve], "running": running, "count": count, "train_time_s": train_time_s}


def restore(state: dict[str, Any], family: torch.nn.Module, ema: Sequence[torch.Tensor] | None,
            opt: torch.optim.Optimizer, scaler: Any, generators: dict[str, torch.Generator]) -> None:
    """Put ``state`` (checked with :func:`problem`) back into the live training objects."""
    family.load_state_dict(state["model"])
    if ema is not None:
        with torch.no_grad():
            for e, saved in zip(ema, state["ema"]):
                e.copy_(saved)
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    for name, g in generators.items():
        g.set_state(state["rng"][name])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def problem(state: Any, family: torch.nn.Module, with_ema: bool) -> str | None:
    """Why ``state`` cannot be restored into ``family`` (format, keys, shapes), or None."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return "not a training state of this bench version"
    missing = {"step", "model", "ema", "optimizer", "rng", "curve", "running", "count", "train_time_s"} - set(state)
    if missing:
        return f"missing {', '.join(sorted(missing))}"
    live = family.state_dict()
    if set(live) != set(state["model"]) or any(live[k].shape != state["model"][k].shape for k in live):
        return "its weights do not match the family's (keys or shapes)"
    params = [p for p in family.parameters() if p.requires_grad]
    if with_ema != (state["ema"] is not None):
        return "EMA weights present in one and not the other"
    if with_ema and [tuple(e.shape) for e in state["ema"]] != [tuple(p.shape) for p in params]:
        return "its EMA weights do not match the family's parameters"
    return None


def slot_key(train_key: str, slot: int) -> str:
    return content_key(KIND, train_key, slot)


class Progress:
    """The saved states of the training ``train_key`` (of ``lineage``, ``steps`` steps) in ``store``;
    ``note`` receives one line for every saved state found unusable (it is then evicted)."""

    def __init__(self, store: Store, train_key: str, lineage: str, steps: int, note: Callable[[str], None]):
        self.store, self.key, self.lineage, self.steps, self.note = store, train_key, lineage, steps, note

    def _own(self) -> dict[int, int]:
        """slot -> saved step, for the slots of this training that exist."""
        out = {}
        for slot in _SLOTS:
            meta = self.store.peek(KIND, slot_key(self.key, slot))
            if meta and isinstance(meta.get("step"), int):
                out[slot] = meta["step"]
        return out

    def newest_step(self) -> int | None:
        own = self._own()
        return max(own.values()) if own else None

    def save(self, state: dict[str, Any], finished: bool = False) -> None:
        """Write ``state`` over the older slot; once ``finished``, drop the other (intermediate) one."""
        own = self._own()
        slot = next((s for s in _SLOTS if s not in own), None)
        if slot is None:
            slot = min(own, key=own.get)
        self.store.put(KIND, slot_key(self.key, slot), lambda d: torch.save(state, d / FILE),
                       meta={"train_key": self.key, "lineage": self.lineage, "step": state["step"],
                             "steps": self.steps, "finished": finished})
        if finished:
            for other in _SLOTS:
                if other != slot:
                    self.store.remove(KIND, slot_key(self.key, other))

    def candidates(self) -> list[tuple[int, str, str]]:
        """``(step, entry key, train key)`` to try, most steps first: this training's own slots, and
        the finished trainings of its lineage with fewer steps (its possible parents)."""
        own = [(step, slot_key(self.key, slot), self.key) for slot, step in self._own().items()
               if step <= self.steps]
        parents = [(meta["step"], entry, meta["train_key"]) for entry, meta in self.store.entries(KIND)
                   if meta.get("lineage") == self.lineage and meta.get("train_key") != self.key
                   and meta.get("finished") and isinstance(meta.get("step"), int) and meta["step"] < self.steps]
        return sorted(own + parents, key=lambda c: -c[0])

    def start(self, family: torch.nn.Module, with_ema: bool) -> Start | None:
        """The most advanced usable saved state, or None (train from scratch). One that fails to
        load or does not fit ``family`` is evicted, with a line in ``note``."""
        for step, entry_key, train_key in self.candidates():
            entry = self.store.get(KIND, entry_key)  # verifies the checksums
            if entry is None:
                continue
            try:  # weights_only: a saved state is data, never code
                state = torch.load(entry / FILE, map_location="cpu", weights_only=True)
                why = problem(state, family, with_ema)
            except Exception as exc:  # unreadable: never use it, never fail on it
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if why is None and state["step"] != step:
                why = "its step differs from its entry's"
            if why is not None:
                self.note(f"saved training state {entry_key[:12]} (step {step}) is not usable ({why}); evicted")
                self.store.remove(KIND, entry_key)
                continue
            return Start(state, step, train_key)
        return None


def saved_step(store: Store, train_key: str) -> int | None:
    """The step of the newest saved state of ``train_key``, or None."""
    return Progress(store, train_key, "", 0, lambda _: None).newest_step()
