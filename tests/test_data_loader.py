"""Training batches through a DataLoader (bench.batches): the default (no workers) draws exactly the
batches bench drew before the DataLoader (the old loop's formula, written out here), any number of
workers gives the same batches, labels reach a family that asks for them, a resumed training gets
the same later batches, and ``train.num_workers`` changes neither the case hash at its default nor
the train key."""
import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bench import trainer
from bench.batches import batches
from bench.context import BuildContext
from bench.errors import CaseFailed
from bench.protocols import DataInfo
from bench.rng import derive_seed
from bench.store import Store
from bench.suite import SuiteError, load_suite

CFG = {"steps": 6, "batch_size": 5, "lr": 1e-3, "ema": 0.0, "grad_clip": None, "weight_decay": 0.0,
       "warmup": 0, "log_every": None}


class Recorder(torch.nn.Module):
    """A family whose loss records the batches (and labels) it is given."""

    def __init__(self, wants_labels=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.wants_labels = wants_labels
        self.seen = []

    def loss(self, x, rng, **kw):
        self.seen.append((x.clone(), kw.get("labels")))
        return (x.mean() - self.w) ** 2


def train_and_record(dataset, seed=3, **cfg):
    fam = Recorder(wants_labels=cfg.pop("wants_labels", False))
    trainer.train(fam, dataset, {**CFG, **cfg}, seed, lambda it, **k: it, lambda what: None)
    return fam.seen


def old_batches(dataset, seed=3, steps=CFG["steps"], batch_size=CFG["batch_size"]):
    """The batch drawing of bench's trainer before the DataLoader, verbatim in effect."""
    data = dataset.split("train")
    gen = torch.Generator().manual_seed(derive_seed(seed, "train-batches"))
    return [data[torch.randint(len(data), (batch_size,), generator=gen)] for _ in range(steps)]


@pytest.fixture
def folder(manager, tmp_path):
    """A labelled image_folder built through the store (its rows stream from a memory map)."""
    rng = np.random.default_rng(1)
    for i in range(24):
        path = tmp_path / "images" / f"c{i % 4}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
    ctx = BuildContext.from_registries(manager.registries, seed=0, store=Store(tmp_path / "store"))
    return manager.registries.dataset.create({"name": "image_folder", "root": str(tmp_path / "images"), "size": 6},
                                             context=ctx)


@pytest.fixture
def digits(manager):
    """A dataset whose split is a plain tensor (no rows())."""
    return manager.registries.dataset.create({"name": "digits8"})


def test_default_path_draws_the_old_batches(digits, folder):
    for ds in (digits, folder):
        seen = train_and_record(ds)
        want = old_batches(ds)
        assert len(seen) == len(want)
        for (x, y), w in zip(seen, want):
            assert torch.equal(x, w) and y is None


def test_two_workers_give_the_same_batches(digits, folder):
    for ds in (digits, folder):
        zero = train_and_record(ds, num_workers=0)
        two = train_and_record(ds, num_workers=2)
        assert len(zero) == len(two) == CFG["steps"]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(zero, two))
    other_seed = train_and_record(folder, seed=4, num_workers=2)
    assert not torch.equal(other_seed[0][0], zero[0][0])  # the order is the seed's


class PidRows:
    """Rows whose values are the id of the process that read them."""

    def __len__(self):
        return 10

    def __getitem__(self, idx):
        return torch.full((len(idx), 1), float(os.getpid()))


class PidData:
    info = DataInfo(name="pids", shape=(1,), modality="points")

    def rows(self, split):
        return PidRows()


def test_workers_read_the_rows_in_other_processes():
    readers = {int(x[0, 0]) for x, _ in train_and_record(PidData(), num_workers=2)}
    assert readers and os.getpid() not in readers
    assert {int(x[0, 0]) for x, _ in train_and_record(PidData())} == {os.getpid()}


def test_labels_reach_a_family_that_asks_for_them(folder):
    seen = train_and_record(folder, wants_labels=True, num_workers=2)
    x_all, y_all = folder.split("train"), folder.labels("train")
    for x, y in seen:
        assert y.dtype == torch.int64 and y.shape == (CFG["batch_size"],)
        rows = [int(torch.nonzero((x_all == xi).all(dim=(1, 2, 3)))[0]) for xi in x]  # random images: unique rows
        assert torch.equal(y, y_all[rows])
    assert all(y is None for _, y in train_and_record(folder))  # a family that does not ask gets none


def test_a_family_wanting_labels_on_unlabelled_data_fails_clearly(manager):
    ds = manager.registries.dataset.create({"name": "toy2d/moons"})
    with pytest.raises(CaseFailed, match="family Recorder trains on class labels .* dataset .* has none"):
        train_and_record(ds, wants_labels=True)


def test_a_resumed_training_reads_the_same_later_batches(folder):
    full = [x for x, _ in batches(folder, Recorder(), {**CFG, "num_workers": 0}, seed=3)]
    resumed = [x for x, _ in batches(folder, Recorder(), {**CFG, "num_workers": 2}, seed=3, start=4)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))


def _in_daemon(dataset, queue):
    try:
        queue.put([x.numpy() for x, _ in batches(dataset, Recorder(), {**CFG, "num_workers": 2}, seed=3)])
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put(repr(exc))


def test_workers_fall_back_to_none_in_a_daemonic_case_process(digits):
    """The process executor runs cases in daemonic processes, which cannot start DataLoader workers:
    the batches are read in the process, the same as ever."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_daemon, args=(digits, queue), daemon=True)
    proc.start()
    got = queue.get(timeout=60)
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert not isinstance(got, str), got
    assert all(torch.equal(torch.from_numpy(a), b) for a, b in zip(got, old_batches(digits)))


SUITE = """
name: loader
matrix:
  dataset: [toy2d/moons]
  family: [ddpm]
  sampler: [ddim]
metrics: [swd]
defaults:
  train: {steps: 10%s}
"""


def test_num_workers_changes_neither_the_default_hash_nor_the_train_key(manager, tmp_path):
    def case(extra):
        (tmp_path / "s.yaml").write_text(SUITE % extra)
        return load_suite(tmp_path / "s.yaml", manager.registries, manager.versions()).cases[0]

    plain, zero, two = case(""), case(", num_workers: 0"), case(", num_workers: 2")
    assert "num_workers" not in plain.train and plain.hash == zero.hash
    assert two.train["num_workers"] == 2 and plain.train_key == zero.train_key == two.train_key
    with pytest.raises(SuiteError, match="num_workers"):
        case(", num_workers: -1")


def test_reading_batches_leaves_torch_global_generator_alone(digits):
    """Dropout draws from torch's global generator; a DataLoader iterator without a generator of its
    own draws its base seed from it, which shifted a resumed training's stream (bench.train_state)."""
    family = type("Family", (), {"wants_labels": False})()
    cfg = {"batch_size": 8, "steps": 3, "num_workers": 0}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(batches(digits, family, cfg, seed=0))
    assert torch.equal(before, torch.get_rng_state())
