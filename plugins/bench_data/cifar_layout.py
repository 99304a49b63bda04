"""The on-disk layout of the CIFAR "python version" and the suite parameter type of its ``root``.

Kept free of numpy and torch, so that ``bench validate`` reads the ``root`` check without importing the
loader (:mod:`bench.signatures`). The format itself is described in :mod:`bench_data.cifar`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, DirectoryPath

LAYOUTS = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "label_key": b"labels",
                "names_key": b"label_names", "num_classes": 10},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "label_key": b"fine_labels", "names_key": b"fine_label_names", "num_classes": 100},
}


def find_root(root: Path, which: str) -> Path:
    """The directory with every file of ``which``'s layout: ``root`` or ``root / folder``; a
    ValueError naming the files expected otherwise (checked when the suite is validated)."""
    lay = LAYOUTS[which]
    files = lay["train"] + lay["test"] + [lay["meta"]]
    for cand in (root, root / lay["folder"]):
        if all((cand / f).is_file() for f in files):
            return cand
    missing = [f for f in files if not (root / f).is_file()]
    raise ValueError(f"{which}: {root} lacks {', '.join(missing)} (expected the CIFAR python version: "
                     f"{', '.join(files)}, in {root} or {root / lay['folder']})")


def root_of(which: str):
    """A suite parameter type: an existing directory holding ``which``'s files."""
    return Annotated[DirectoryPath, AfterValidator(lambda p: (find_root(Path(p), which), p)[1])]
