"""bench's Inception-I3D (:mod:`bench_metrics.i3d_net`) against the peer network, piergiaj/pytorch-i3d's
``InceptionI3d``, and the ``i3d`` extractor's state-dict path.

The peer's outputs on seeded weights and clips are stored in ``tests/data/i3d_peer_outputs.npz`` and
its state-dict names and shapes in ``tests/data/i3d_peer_state_dict_keys.json``, both written by
``tests/support/i3d_peer_reference.py`` (which ran the peer); the weights and clips are regenerated
here from the same seed (``tests/support/i3d_seeded.py``). One forward pass at 224x224 takes about
0.7 s per 9-frame clip on one CPU thread."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.errors import UserError
from bench_data.moving_digits import MovingDigits
from bench_metrics import i3d_net
from bench_metrics.fvd import FVD
from bench_metrics.testing import build_context, metric_context
from bench_metrics.video_extractors import I3D, I3D_ENV
from i3d_seeded import seeded_clip, seeded_state_dict

DATA = Path(__file__).resolve().parent / "data"
PEER_SHAPES = [(k, tuple(s)) for k, s in json.loads((DATA / "i3d_peer_state_dict_keys.json").read_text())]


@pytest.fixture(scope="module")
def peer_state():
    return seeded_state_dict(PEER_SHAPES)


@pytest.fixture(scope="module")
def peer_outputs():
    return dict(np.load(DATA / "i3d_peer_outputs.npz"))


@pytest.fixture(scope="module")
def clips9():
    """Moving digits with 9 frames (I3D's minimum), 16x16."""
    return MovingDigits(frames=9, size=16, digit_size=8, max_speed=2, n_train=8, n_test=4)


def close(got: torch.Tensor, ref: np.ndarray) -> None:
    ref_t = torch.from_numpy(ref)
    assert got.shape == ref_t.shape
    assert (got - ref_t).abs().max().item() <= 1e-5 * max(1.0, ref_t.abs().max().item())


def test_parameter_names_and_shapes_are_the_peers():
    ours = {k: tuple(v.shape) for k, v in i3d_net.InceptionI3D().state_dict().items()}
    assert ours == dict(PEER_SHAPES) and len(ours) == len(PEER_SHAPES)


def test_same_padding_is_tensorflows():
    # out = ceil(s / r), total = (out - 1) r + k - s, the odd one behind; F.pad lists the last axis first
    assert i3d_net.same_padding((224, 224), (7, 7), (2, 2)) == [2, 3, 2, 3]
    assert i3d_net.same_padding((9, 199), (3, 3), (2, 2)) == [1, 1, 1, 1]
    assert i3d_net.same_padding((8,), (2,), (2,)) == [0, 0] and i3d_net.same_padding((5,), (1,), (1,)) == [0, 0]


def test_features_of_a_224_clip_reproduce_the_peer(peer_state, peer_outputs):
    net = i3d_net.from_state_dict(peer_state)
    x = seeded_clip("square")  # (1, 3, 9, 224, 224): no resizing, one time position
    with torch.no_grad():
        close(net.fvd_features(x, "logits"), peer_outputs["square_logits"].mean(axis=2))
        close(net.fvd_features(x, "pool"), peer_outputs["square_pool"].mean(axis=(2, 3, 4)))


def test_maps_of_an_odd_sized_clip_reproduce_the_peer(peer_state, peer_outputs):
    net = i3d_net.from_state_dict(peer_state)
    x = seeded_clip("odd")  # (1, 3, 17, 199, 201): the padding's odd cases, two time positions
    with torch.no_grad():
        pooled = net.pooled(x)
        logits = net.logits(pooled)
    close(pooled, peer_outputs["odd_pool"])
    close(logits.reshape(peer_outputs["odd_logits"].shape), peer_outputs["odd_logits"])


def test_short_clips_and_unknown_features_are_errors():
    net = i3d_net.InceptionI3D(num_classes=4)
    with pytest.raises(ValueError, match="at least 9 frames"):
        net.fvd_features(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="features must be one of"):
        net.fvd_features(torch.zeros(1, 3, 9, 32, 32), "mixed_5c")


def save_variants(state: dict, tmp_path: Path) -> dict[str, Path]:
    """The state dict as the peer's own files hold it (PyTorch 0.3: a pickle stream without
    ``num_batches_tracked``), as a current ``torch.save`` and as a DataParallel training checkpoint."""
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    paths = {name: tmp_path / f"{name}.pt" for name in ("legacy", "current", "checkpoint")}
    torch.save(legacy, paths["legacy"], _use_new_zipfile_serialization=False)
    torch.save(state, paths["current"])
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, paths["checkpoint"])
    return paths


def test_peer_format_files_load_strictly_and_are_labelled_not_comparable(peer_state, clips9, tmp_path):
    said = []
    for name, path in save_variants(peer_state, tmp_path).items():
        ext = I3D(path=str(path), context=build_context(clips9, tmp_path / "store", log=said.append))
        ext.prepare()
        assert ext.convention == "state-dict" and not ext.comparable_with_published, name
        loaded = ext.net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in peer_state.items()), name
        desc = ext.describe()
        assert desc["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert desc["features"] == "logits" and desc["num_classes"] == 400 and "NOT comparable" in desc["note"]
    assert sum("NOT comparable with published FVD" in s for s in said) == 3


def test_extractor_features_are_the_networks_on_the_quantised_clips(peer_state, clips9, tmp_path):
    path = tmp_path / "i3d.pt"
    torch.save(peer_state, path)
    ctx = build_context(clips9, tmp_path / "store")
    clip = clips9.split("test")[:1]  # (1, 9, 1, 16, 16) grey
    logits = I3D(path=str(path), context=ctx).features(clip)
    ext = I3D(path=str(path), features="pool", context=ctx)
    pool = ext.features(clip)
    assert logits.shape == (1, 400) and pool.shape == (1, 1024) and logits.dtype == torch.float64
    assert ext.describe()["features"] == "pool"
    # the network's own input: uint8 frames back in [-1, 1], grey repeated to RGB, (N, 3, T, H, W)
    x = (torch.round((clip + 1) * 127.5) / 127.5 - 1).expand(-1, -1, 3, -1, -1).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        direct = ext.net.fvd_features(x.contiguous(), "pool")
    torch.testing.assert_close(pool, direct.to(torch.float64), rtol=1e-6, atol=1e-6)
    # logits are linear in the pooled features, so their time averages are too: W mean(pool) + b
    w, b = (peer_state[f"logits.conv3d.{p}"].to(torch.float64) for p in ("weight", "bias"))
    torch.testing.assert_close(logits, pool @ w.flatten(1).T + b, rtol=1e-5, atol=1e-5)


def test_short_clips_give_one_clear_error(peer_state, tmp_path):
    path = tmp_path / "i3d.pt"
    torch.save(peer_state, path)
    eight = MovingDigits(frames=8, size=16, digit_size=8, max_speed=2, n_train=4, n_test=4)
    with pytest.raises(UserError, match="clips of 8 frames are too short for I3D"):
        I3D(path=str(path), context=build_context(eight, tmp_path / "store")).features(eight.split("test")[:1])


def test_wrong_files_give_one_clear_error(peer_state, clips9, tmp_path):
    ctx = build_context(clips9, tmp_path / "store")

    def error(obj, **kw) -> str:
        path = tmp_path / "bad.pt"
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        with pytest.raises(UserError) as info:
            I3D(path=str(path), context=ctx, **kw).prepare()
        assert "\n" not in str(info.value)
        return str(info.value)

    renamed = {k.replace("Mixed_4c.", "Mixed_4x."): v for k, v in peer_state.items() if k != "logits.conv3d.bias"}
    msg = error(renamed)
    assert "not a pytorch-i3d InceptionI3d state dict" in msg
    # 36 Mixed_4c names, less 6 num_batches_tracked (optional: absent from PyTorch 0.3 files), plus the bias
    assert "missing Mixed_4c.b0.conv3d.weight, " in msg and "(31 in all); unexpected Mixed_4x." in msg
    wrong = {**peer_state, "Mixed_3b.b1b.conv3d.weight": torch.zeros(128, 96, 1, 3, 3)}
    assert "Mixed_3b.b1b.conv3d.weight has shape [128, 96, 1, 3, 3], InceptionI3D expects [128, 96, 3, 3, 3]" \
        in error(wrong)
    flow = {k: (v[:, :2] if k == "Conv3d_1a_7x7.conv3d.weight" else v) for k, v in peer_state.items()}
    assert "takes 2 input channels" in error(flow)
    assert "holds no state dict" in error({"epoch": 3, "note": "no weights"})
    assert "neither a TorchScript module nor a torch.save file" in error(b"not a weights file at all")
    script = tmp_path / "script.pt"
    torch.jit.script(nn.Identity()).save(str(script))
    with pytest.raises(UserError, match="features: pool needs a pytorch-i3d state dict"):
        I3D(path=str(script), features="pool", context=ctx).prepare()


def test_the_class_count_follows_the_file(clips9, tmp_path):
    charades = {k: v for k, v in i3d_net.InceptionI3D(num_classes=157).state_dict().items()}
    path = tmp_path / "charades.pt"
    torch.save(charades, path)
    ext = I3D(path=str(path), context=build_context(clips9, tmp_path / "store"))
    ext.prepare()
    assert ext.net.num_classes == 157 and ext.describe()["num_classes"] == 157


@pytest.mark.slow
def test_fvd_with_a_state_dict_i3d_runs_end_to_end_and_is_labelled(peer_state, clips9, tmp_path, monkeypatch):
    path = tmp_path / "i3d.pt"
    torch.save(peer_state, path)
    monkeypatch.setenv(I3D_ENV, str(path))

    class CopyLast(nn.Module):
        def reconstruct_and_predict(self, context, context_index, target_index, rng):
            return context, context[:, -1:].expand(-1, len(target_index), -1, -1, -1)

    ctx = metric_context(clips9, family=CopyLast(), store=tmp_path / "store")
    out = FVD(extractor="i3d", context_frames=3, num_videos=None, bootstrap=0, context=ctx.build_context).compute(ctx)
    assert out["fvd_published_comparable"] == 0 and out["fvd_feature_dim"] == 400
    assert out["fvd"] > 0 and out["fvd_floor"] > 0
    record = json.loads((ctx.artifact_dir / "fvd.json").read_text())
    assert record["extractor"]["call"] == "state-dict"
    assert record["extractor"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
