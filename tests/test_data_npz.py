"""npz: uint8 levels or float model-space images, optional labels, validation with one-line errors."""
import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench_data.npz import NPZImages


def test_uint8_images_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 3, 5, 7), dtype=np.uint8)
    y = rng.integers(0, 4, size=20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = NPZImages(path=tmp_path / "d.npz", test_fraction=0.25)
    assert ds.info.shape == (3, 5, 7) and ds.info.levels == 256 and ds.info.params["num_classes"] == int(y.max()) + 1
    train, test = ds.split("train"), ds.split("test")
    assert len(train) == 15 and len(test) == 5
    # every image comes back exactly once, at 2k/255 - 1, with its own label
    both = torch.cat([train, test])
    k = ((both.numpy() + 1) * 255 / 2).round().astype(np.uint8)
    assert np.allclose(both.numpy(), 2 * k.astype(np.float32) / 255 - 1, atol=1e-7)
    labels = torch.cat([ds.labels("train"), ds.labels("test")]).numpy()
    order = [int(np.flatnonzero((x == img).all(axis=(1, 2, 3)))[0]) for img in k]
    assert sorted(order) == list(range(20)) and np.array_equal(labels, y[order])
    again = NPZImages(path=tmp_path / "d.npz", test_fraction=0.25)
    assert torch.equal(again.split("test"), test)  # the split depends on data_seed only
    assert not torch.equal(NPZImages(path=tmp_path / "d.npz", test_fraction=0.25, data_seed=1).split("test"), test)


def test_float_images_are_taken_as_model_space(tmp_path):
    x = np.linspace(-1, 1, 2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    np.savez(tmp_path / "f.npz", x=x)
    ds = NPZImages(path=tmp_path / "f.npz", test_fraction=0.5)
    assert ds.info.levels is None and "num_classes" not in ds.info.params
    assert torch.equal(torch.sort(torch.cat([ds.split("train"), ds.split("test")]).flatten()).values,
                       torch.from_numpy(x.astype(np.float32).ravel()))
    with pytest.raises(ValueError, match="has no labels"):
        ds.labels("train")


@pytest.mark.parametrize("arrays,message", [
    ({"images": np.zeros((2, 1, 4, 4), np.uint8)}, "has no array 'x' \\(found: images\\)"),
    ({"x": np.zeros((2, 4, 4), np.uint8)}, "x must have shape \\(N >= 2, C in \\{1, 3\\}, H, W\\), got \\(2, 4, 4\\)"),
    ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, "channels last\\? store x.transpose\\(0, 3, 1, 2\\)"),
    ({"x": np.zeros((2, 1, 4, 4), np.int32)}, "x must be uint8 \\(levels 0..255\\) or float in \\[-1, 1\\], got int32"),
    ({"x": np.full((2, 1, 4, 4), 255.0)}, "float x must be in \\[-1, 1\\] \\(model space\\), got values in \\[255, 255\\]"),
    ({"x": np.full((2, 1, 4, 4), np.nan)}, "float x has 32 non-finite values"),
    ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, 1, 2])}, "y must be 2 non-negative integers"),
    ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0.0, 1.0])}, "y must be 2 non-negative integers"),
])
def test_bad_files_give_one_clear_line(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message) as err:
        NPZImages(path=tmp_path / "bad.npz")
    assert "\n" not in str(err.value) and "bad.npz" in str(err.value)


def test_not_an_npz_file(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(UserError, match="npz: cannot read .*x.npz"):
        NPZImages(path=tmp_path / "x.npz")
