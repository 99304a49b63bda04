"""cifar10 / cifar100 read tiny copies written in the real "python version" format: pickled dicts with
bytes keys (protocol 2, as the Python 2 originals), b"data" uint8 (N, 3072) red-green-blue planes."""
import pickle

import numpy as np
import pytest
import torch

from bench.errors import UserError
from bench_data.cifar import CIFAR

CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def fake_cifar10(root, per_batch=3, seed=0):
    """Write the six batches and batches.meta; return {file: (data, labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in CIFAR10_BATCHES:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()  # the real files store a list
        write(root / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]})
        out[name] = (data, labels)
    write(root / "batches.meta", {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                                  b"label_names": [f"class{i}".encode() for i in range(10)]})
    return out


def test_cifar10_reads_the_python_version(tmp_path):
    files = fake_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder itself or its parent
        ds = CIFAR(root=root, which="cifar10")
        assert ds.info.shape == (3, 32, 32) and ds.info.levels == 256 and ds.info.modality == "image"
        assert ds.info.params["num_classes"] == 10 and ds.class_names[3] == "class3"
    train, test = ds.split("train"), ds.split("test")
    assert train.shape == (15, 3, 32, 32) and test.shape == (3, 3, 32, 32) and train.dtype == torch.float32
    data = np.concatenate([files[f"data_batch_{i}"][0] for i in range(1, 6)])
    # row layout: 1024 red values (row-major), then green, then blue; model space 2k/255 - 1
    i, r, c = 7, 5, 30
    for ch in range(3):
        k = int(data[i, ch * 1024 + r * 32 + c])
        assert float(train[i, ch, r, c]) == pytest.approx(2 * k / 255 - 1, abs=1e-7)
    k = torch.from_numpy(((train.numpy() + 1) * 255 / 2).round().astype(np.uint8).reshape(15, 3072))
    assert np.array_equal(k.numpy(), data)  # every pixel, and the batches in file order
    labels = sum((files[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.labels("train").tolist() == labels and ds.labels("train").dtype == torch.int64
    assert ds.labels("test").tolist() == files["test_batch"][1]


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    fine = {}
    for name, n in (("train", 4), ("test", 2)):
        fine[name] = rng.integers(0, 100, size=n).tolist()
        write(tmp_path / name, {b"filenames": [b"a"] * n, b"batch_label": name.encode(), b"fine_labels": fine[name],
                                b"coarse_labels": [0] * n, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    write(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    ds = CIFAR(root=tmp_path, which="cifar100")
    assert ds.info.params["num_classes"] == 100 and ds.class_names[99] == "f99"
    assert ds.labels("train").tolist() == fine["train"] and ds.labels("test").tolist() == fine["test"]
    assert ds.split("train").shape == (4, 3, 32, 32)


def test_missing_and_malformed_files_give_one_clear_line(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"lacks data_batch_3 \(expected the CIFAR python version: data_batch_1"):
        CIFAR(root=tmp_path, which="cifar10")
    with pytest.raises(UserError, match="lacks train, test, meta"):
        CIFAR(root=tmp_path, which="cifar100")
    fake_cifar10(tmp_path)
    write(tmp_path / "test_batch", {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.float32)})
    with pytest.raises(UserError, match=r"test_batch: b'data' must be uint8 of shape \(N, 3072\)"):
        CIFAR(root=tmp_path, which="cifar10")
    write(tmp_path / "test_batch", {b"labels": [0, 10], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(UserError, match="must be 2 integers in 0..9"):
        CIFAR(root=tmp_path, which="cifar10")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read .*test_batch as a CIFAR pickle"):
        CIFAR(root=tmp_path, which="cifar10")


def test_registered_by_name_and_checked_when_the_suite_loads(manager, tmp_path):
    from bench.suite import load_suite

    fake_cifar10(tmp_path / "c10", per_batch=2)
    regs = manager.registries
    assert regs.dataset.entry("cifar10").meta["modality"] == "image"
    ds = regs.dataset.create({"name": "cifar10", **regs.dataset.validate("cifar10", {"root": str(tmp_path / "c10")})})
    assert ds.info.name == "cifar10" and ds.split("train").shape == (10, 3, 32, 32)
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\nmatrix:\n  dataset:\n    - {{name: cifar100, root: {tmp_path / 'c10'}}}\n"
                     "  family: [ddpm]\n  sampler: [ddim]\n")
    with pytest.raises(UserError) as err:
        load_suite(suite, regs, manager.versions())
    assert err.value.location.line == 4 and "cifar100: " in err.value.message
    assert "lacks train, test, meta" in err.value.message
