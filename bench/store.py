"""Content-addressed store for checkpoints and reference statistics.

Layout: ``<root>/<kind>/<key[:2]>/<key>/`` holding the payload files and ``entry.json`` (what the
key was made of, and the sha256 of every file). Entries are written in a temporary directory and
renamed into place, so a reader sees a complete entry or none; an entry being replaced is renamed
aside just before (the old one is deleted after the new one is in place). A file whose checksum no longer
matches is detected, the entry removed, and the caller rebuilds it: a corrupt entry is never used.
``lock()`` is an ``fcntl`` file lock so that processes sharing a store (process pool, Ray workers on
a shared mount) build each entry once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class StoreCorrupt(Exception):
    pass


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{kind}-{key}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, kind: str, key: str) -> Path | None:
        """The verified entry directory, or None if absent. A corrupt entry is removed."""
        d = self.entry_dir(kind, key)
        manifest = d / "entry.json"
        if not manifest.exists():
            return None
        try:
            info = json.loads(manifest.read_text())
            for name, digest in info["files"].items():
                if file_sha256(d / name) != digest:
                    raise StoreCorrupt(name)
        except (OSError, ValueError, KeyError, StoreCorrupt):
            self.remove(kind, key)
            return None
        return d

    def meta(self, kind: str, key: str) -> dict[str, Any] | None:
        d = self.get(kind, key)
        return None if d is None else json.loads((d / "entry.json").read_text()).get("meta", {})

    def peek(self, kind: str, key: str) -> dict[str, Any] | None:
        """The entry's meta without verifying its files (cheap; :meth:`get` verifies), or None."""
        try:
            return json.loads((self.entry_dir(kind, key) / "entry.json").read_text()).get("meta") or {}
        except (OSError, ValueError, AttributeError):
            return None

    def entries(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, meta)`` of every entry of ``kind``, unverified: a cheap scan (:meth:`get` verifies)."""
        for manifest in sorted((self.root / kind).glob("*/*/entry.json")):
            if manifest.parent.name.startswith("."):  # an entry being written or deleted
                continue
            try:
                info = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            yield manifest.parent.name, info.get("meta") or {}

    def put(self, kind: str, key: str, writer: Callable[[Path], None], meta: dict | None = None) -> Path:
        """Create the entry by calling ``writer(tmpdir)`` and renaming it into place."""
        final = self.entry_dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))
        try:
            writer(tmp)
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / "entry.json").write_text(json.dumps(
                {"kind": kind, "key": key, "created": time.time(), "files": files, "meta": meta or {}},
                indent=1, default=str))
            trash = self._to_trash(final)  # two renames: the old entry is gone for microseconds only
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return final

    def remove(self, kind: str, key: str) -> None:
        trash = self._to_trash(self.entry_dir(kind, key))
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _to_trash(d: Path) -> Path | None:
        """Rename the entry ``d`` out of the way (atomic); the caller deletes what it returns."""
        if not d.exists():
            return None
        trash = d.with_name(f".trash-{d.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(d, trash)
        return trash
