"""image_folder: class labels from subfolders, resizing to a square, to [H, W] or not at all, and the
unlabelled flat layout unchanged."""
import numpy as np
import pytest
import torch
from PIL import Image

from bench.errors import UserError
from bench_data.folder import ImageFolder


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def solid(value, h=6, w=10, rgb=True):
    """A constant image whose level identifies it."""
    return np.full((h, w, 3) if rgb else (h, w), value, dtype=np.uint8)


def test_labels_from_subfolders_at_native_resolution(tmp_path):
    # class "cat" holds levels 10, 11, 12 (one in a nested folder), class "dog" levels 200, 201
    for name, value in (("cat/a.png", 10), ("cat/b.png", 11), ("cat/deep/c.png", 12), ("dog/x.png", 200),
                        ("dog/y.png", 201)):
        save(tmp_path / name, solid(value))
    ds = ImageFolder(root=tmp_path, size=None, channels=3, test_fraction=0.4)
    assert ds.info.shape == (3, 6, 10) and ds.info.levels == 256
    assert ds.info.params["num_classes"] == 2 and ds.class_names == ["cat", "dog"]
    for split in ("train", "test"):
        x, y = ds.split(split), ds.labels(split)
        assert len(x) == len(y) and y.dtype == torch.int64
        levels = ((x[:, 0, 0, 0] + 1) * 255 / 2).round().long()
        assert torch.equal(y, (levels >= 200).long())  # each image carries its own folder's class
    assert len(ds.split("test")) == 2


def test_resize_to_height_and_width_and_greyscale(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", solid(50 * i, h=9, w=9))
    ds = ImageFolder(root=tmp_path, size=(4, 6), channels=1)
    assert ds.info.shape == (1, 4, 6)
    assert "num_classes" not in ds.info.params
    with pytest.raises(ValueError, match="has no labels"):
        ds.labels("train")
    square = ImageFolder(root=tmp_path, size=5, channels=3)
    assert square.info.shape == (3, 5, 5)
    vals = torch.cat([square.split("train"), square.split("test")])
    assert sorted(round(float(v), 6) for v in vals[:, 0, 2, 2]) == [round(2 * 50 * i / 255 - 1, 6) for i in range(3)]


def test_flat_folder_keeps_its_old_split(tmp_path):
    """The unlabelled layout gives what image_folder gave before labels: the same permutation (seeded by
    "folder" and data_seed) and 2k/255 - 1 in float32."""
    from bench.rng import derive_seed

    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(10)]
    for i, im in enumerate(imgs):
        save(tmp_path / f"{i:02d}.png", im)
    ds = ImageFolder(root=tmp_path, size=8)
    order = np.random.default_rng(derive_seed("folder", 0) % (2**32)).permutation(10)
    k = torch.tensor(np.stack(imgs), dtype=torch.float32).permute(0, 3, 1, 2)
    assert torch.equal(ds.split("test"), (2 * k / 255 - 1)[order[:1]])
    assert torch.equal(ds.split("train"), (2 * k / 255 - 1)[order[1:]])


def test_layout_errors(tmp_path):
    save(tmp_path / "cls/a.png", solid(1))
    save(tmp_path / "cls/b.png", solid(2))
    save(tmp_path / "loose.png", solid(3))
    with pytest.raises(UserError, match="1 image\\(s\\) directly in .* \\(e.g. loose.png\\) and others in class subfolders"):
        ImageFolder(root=tmp_path)
    (tmp_path / "loose.png").unlink()
    save(tmp_path / "cls/c.png", solid(3, h=7))
    with pytest.raises(UserError, match="c.png is 10x7 but .*a.png is 10x6; set size to resize"):
        ImageFolder(root=tmp_path, size=None)
    assert ImageFolder(root=tmp_path, size=6).info.shape == (3, 6, 6)


def test_registry_accepts_a_height_width_pair(manager, tmp_path):
    for i in range(2):
        save(tmp_path / f"c{i}/{i}.png", solid(i))
    regs = manager.registries
    params = regs.dataset.validate("image_folder", {"root": str(tmp_path), "size": [3, 4]})
    ds = regs.dataset.create({"name": "image_folder", **params})
    assert ds.info.shape == (3, 3, 4) and ds.info.params["num_classes"] == 2
    assert regs.dataset.validate("image_folder", {"root": str(tmp_path), "size": None})["size"] is None
