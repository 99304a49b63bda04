"""Where a case runs and in what precision (DESIGN.md section 7; issue 14).

- device: ``auto | cpu | cuda | cuda:N | mps``; ``auto`` is CUDA when torch sees a GPU, else the CPU.
  It is resolved when the suite is validated, so that a device the machine lacks is a user error before
  anything runs. The device is provenance (the ``bench.device`` tag), not part of a case's hash.
- precision: ``fp32 | bf16 | fp16``. With bf16 or fp16 the network's matrix products and convolutions
  run under ``torch.autocast`` (training and sampling; element-wise maths stays float32); fp16 training
  scales the loss with ``torch.amp.GradScaler`` so that small gradients do not underflow. fp32 uses no
  autocast at all, so its numbers are those bench gave before precision existed.
- tf32: on CUDA, ``torch.backends.cuda.matmul.allow_tf32`` (and cuDNN's) for the case; ignored elsewhere.
- threads: torch's intra-op thread count for the case (``threads:`` in a suite, ``--threads``; default
  ``resources.cpus``, else 1). It changes the order of float reductions, so it is part of the case's
  config and hash, and it is the same whatever the executor or the machine's load (issue 14, item 8).
- compile: ``compile: true`` on a network spec runs the network's ``forward`` through
  ``torch.compile`` (training and sampling); the module, its hooks and its state dict are unchanged.
"""
from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch

import os
import sys

from .errors import UserError

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: precision -> the torch dtype autocast uses (by name: this module imports torch only when a case needs it)
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def visible_devices() -> str:
    """What torch sees, in words: ``cpu``, then ``cuda:0 (NAME)`` ... and ``mps`` where present."""
    import torch
    seen = ["cpu"]
    if torch.cuda.is_available():
        seen += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        seen.append("mps")
    return ", ".join(seen)


def resolve_device(name: str | None) -> str:
    """The device a case runs on: ``auto`` (or None) becomes ``cuda`` when available, else ``cpu``.
    Raises :class:`UserError` naming the device and what torch sees when the machine lacks it.
    ``cpu``, and ``auto`` on a machine without GPU device files (:func:`may_have_cuda`), are resolved
    without importing torch, so that ``bench validate`` stays fast."""
    name = "auto" if name is None else str(name)
    if not DEVICE_RE.match(name):
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")
    if name == "cpu" or (name == "auto" and not may_have_cuda()):
        return "cpu"
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind == "cuda":
        index = int(name.split(":")[1]) if ":" in name else 0
        ok = torch.cuda.is_available() and index < torch.cuda.device_count()
    elif kind == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    else:
        ok = True
    if not ok:
        raise UserError(f"device '{name}' is not available on this machine; torch sees: {visible_devices()}")
    return name


#: device files without which torch cannot see a CUDA (or ROCm) GPU on Linux: NVIDIA's control device,
#: WSL2's GPU paravirtualisation device, and ROCm's kernel fusion driver
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def may_have_cuda() -> bool:
    """False when torch certainly sees no CUDA device: on Linux without any of
    :data:`_GPU_DEVICE_FILES`, and on macOS (no CUDA builds). True elsewhere (then torch is asked)."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(path) for path in _GPU_DEVICE_FILES)
    return True


def autocast(device: str, precision: str):
    """``torch.autocast`` for ``precision`` on ``device``; no context at all for fp32."""
    import torch
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype))


def grad_scaler(device: str, precision: str) -> "torch.amp.GradScaler | None":
    """A loss scaler for fp16 training (None otherwise): the loss is multiplied by a factor that is
    halved whenever gradients overflow and doubled after a run of finite steps."""
    import torch
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


@contextlib.contextmanager
def tf32(device: str, enabled: bool | None) -> Iterator[None]:
    """Allow TF32 matrix products on CUDA for the duration (None or a non-CUDA device: unchanged)."""
    import torch
    if enabled is None or torch.device(device).type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously), so a wall-clock time
    measured around it covers the work itself."""
    import torch
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def pinnable_gpus(devices) -> int:
    """GPUs to spread worker processes over, one each: the number torch sees when every case runs on
    plain ``cuda`` (an explicit ``cuda:N`` names a GPU itself, so nothing is pinned), else 0."""
    import torch
    devices = set(devices)
    if devices != {"cuda"} or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (the case's ``threads``), restored afterwards; ``n`` None
    or 0 leaves the count as it is."""
    if not n:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compiled(network: "torch.nn.Module") -> "torch.nn.Module":
    """``network`` with its ``forward`` compiled by ``torch.compile`` (in place; returned). Only the
    forward is compiled: the module's own hooks (bench's NFE counter, budget checks) stay eager, and
    the parameters and state-dict keys are those of the plain module, so checkpoints are shared."""
    import torch
    network.forward = torch.compile(network.forward)
    network.bench_compiled = True
    return network
