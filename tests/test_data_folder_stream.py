"""image_folder streams from a decoded cache in the store: decoded once (a second build decodes
nothing), memory-mapped (building holds no copy of the data in memory), invalidated by a changed or
added file, and nothing written outside the store. The values are checked against PIL decoding each
file directly in the test."""
import os
import pickle
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from bench.context import BuildContext
from bench.errors import UserError
from bench.rng import derive_seed
from bench.store import Store
from bench_data.folder import CACHE_KIND

CLASSES = ("ant", "bee", "cow")


def write_folder(root, n, side, seed=0, suffix="png"):
    """``n`` random RGB images ``side`` x ``side`` spread over three class subfolders; returns the
    sorted file list (the order image_folder reads them in)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / CLASSES[i % 3] / f"{i:04d}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, compress_level=0)
    return sorted(root.rglob(f"*.{suffix}"))


def pil_levels(files, side):
    """The oracle: each file decoded and resized by PIL directly, stacked (N, 3, side, side)."""
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR)))
    return np.stack(out).transpose(0, 3, 1, 2)


@pytest.fixture
def counted_opens(monkeypatch):
    """How many image files PIL opened (each decode opens one)."""
    calls = []
    real = Image.open

    def counting(fp, *args, **kwargs):
        calls.append(fp)
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def build(manager, root, store, **params):
    notes = []
    ctx = BuildContext.from_registries(manager.registries, seed=0, store=store, log=notes.append)
    regs = manager.registries
    spec = {"name": "image_folder", **regs.dataset.validate("image_folder", {"root": str(root), **params})}
    return regs.dataset.create(spec, context=ctx), notes


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_decoded_once_into_the_store_then_memory_mapped(manager, tmp_path, monkeypatch, counted_opens):
    images, cwd = tmp_path / "images", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    files = write_folder(images, 60, side=12)
    before = snapshot(images)
    store = Store(tmp_path / "store")
    ds, notes = build(manager, images, store, size=8)
    assert len(counted_opens) == 60 and "decoded 60 images" in notes[0]
    assert ds.info.shape == (3, 8, 8) and ds.info.params["num_classes"] == 3

    # the values: the test's own PIL decoding, split by image_folder's documented permutation
    k = torch.from_numpy(pil_levels(files, 8)).float()
    order = np.random.default_rng(derive_seed("folder", 0) % (2**32)).permutation(60)
    classes = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    for split, rows in (("test", order[:6]), ("train", order[6:])):
        assert torch.equal(ds.split(split), 2 * k[rows] / 255 - 1)
        assert torch.equal(ds.labels(split), classes[rows])
        idx = torch.tensor([3, 0, 3, 1])
        assert torch.equal(ds.rows(split)[idx], ds.split(split)[idx])

    mapped = ds.rows("train").levels
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert str(store.root) in str(mapped.filename)

    opened = len(counted_opens)  # the oracle's decoding above opened files too
    again, notes = build(manager, images, store, size=8)  # a second build decodes nothing
    assert len(counted_opens) == opened and "reusing" in notes[0]
    for split in ("train", "test"):
        assert torch.equal(again.split(split), ds.split(split))

    assert snapshot(images) == before and list(cwd.iterdir()) == []  # nothing written outside the store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "images", "store"]


def test_a_changed_or_added_file_makes_a_new_decode(manager, tmp_path, counted_opens):
    images = tmp_path / "images"
    files = write_folder(images, 12, side=8)
    store = Store(tmp_path / "store")
    first, _ = build(manager, images, store, size=None)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(files[5])  # new content, same name and size
    st = files[5].stat()
    os.utime(files[5], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock sees a change too
    opened = len(counted_opens)
    changed, notes = build(manager, images, store, size=None)
    assert len(counted_opens) == opened + 12 and "decoded 12 images" in notes[0]
    all_rows = torch.cat([changed.split("train"), changed.split("test")])
    assert (all_rows == 2 * 7 / 255 - 1).all(dim=(1, 2, 3)).sum() == 1  # the new image is there
    assert not torch.equal(torch.cat([first.split("train"), first.split("test")]), all_rows)

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "ant" / "new.png")
    opened = len(counted_opens)
    added, _ = build(manager, images, store, size=None)
    assert len(counted_opens) == opened + 13
    assert len(added.split("train")) + len(added.split("test")) == 13
    assert len(list((store.root / CACHE_KIND).glob("*/*"))) == 3  # one entry per folder state


def test_building_holds_no_copy_of_the_data(manager, tmp_path):
    """Python-side allocations (numpy reports its buffers to tracemalloc) while building and reading a
    batch stay far below the data's size with the store; without a store the levels are in memory,
    which the same measurement sees (so it can fail)."""
    images = tmp_path / "images"
    n, side = 300, 96  # 8.3 MB of levels; the store hashes its files in 1 MB chunks (about 2 MB at once)
    write_folder(images, n, side=side, suffix="bmp")  # BMP: quick to write
    data_bytes = n * 3 * side * side

    def peak(fn):
        tracemalloc.start()
        try:
            out = fn()
            return out, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    store = Store(tmp_path / "store")
    ds, cold = peak(lambda: build(manager, images, store, size=None)[0])
    _, warm = peak(lambda: build(manager, images, store, size=None)[0])
    batch, read = peak(lambda: ds.rows("train")[torch.randint(len(ds.rows("train")), (16,))])
    assert batch.shape == (16, 3, side, side)
    assert cold < data_bytes / 2 and warm < data_bytes / 2 and read < data_bytes / 10, (cold, warm, read, data_bytes)

    from bench_data.folder import ImageFolder

    _, in_memory = peak(lambda: ImageFolder(root=images, size=None))
    assert in_memory >= data_bytes


def test_rows_pickle_as_a_file_name_for_loader_workers(manager, tmp_path):
    images = tmp_path / "images"
    write_folder(images, 30, side=16)
    ds, _ = build(manager, images, Store(tmp_path / "store"), size=16)
    rows = ds.rows("train")
    blob = pickle.dumps(rows)
    assert len(blob) < 2000  # the file name and the row index, not the 30 x 768 levels
    idx = torch.tensor([0, 5, 5, 2])
    assert torch.equal(pickle.loads(blob)[idx], rows[idx])


def test_a_failed_decode_leaves_no_entry(manager, tmp_path):
    images = tmp_path / "images"
    write_folder(images, 4, side=8)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(images / "bee" / "odd.png")
    store = Store(tmp_path / "store")
    with pytest.raises(UserError, match="odd.png is 8x9 but .*0000.png is 8x8; set size to resize"):
        build(manager, images, store, size=None)
    assert not list((store.root / CACHE_KIND).glob("*/*"))
