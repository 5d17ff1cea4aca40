"""Rasterised masks on disk, shared across epochs, DataLoader workers and runs.

A cache folder is named by a hash of everything a mask depends on: the annotation file's
bytes, the class list, the overlap policy, the crowd mode and this module's format version.
Editing any of them selects a new folder, so a stale mask is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
CACHE_ENV = "TRASHSEG_CACHE"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "trashseg" / "masks"))


def cache_key(ann_bytes: bytes, classes: Sequence[str], overlap: str, crowd: str) -> str:
    digest = hashlib.sha256(ann_bytes)
    digest.update(json.dumps([CACHE_VERSION, list(classes), overlap, crowd]).encode())
    return digest.hexdigest()[:20]


class MaskCache:
    """One `.npy` per image id inside the folder of one cache key; writes are atomic."""

    def __init__(self, root: str | Path, key: str, description: dict | None = None):
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        if description is not None and not (self.folder / "about.json").exists():
            _atomic_write(self.folder / "about.json", json.dumps(description, indent=1).encode())

    def path(self, image_id: int) -> Path:
        return self.folder / f"{image_id}.npy"

    def has(self, image_id: int) -> bool:
        return self.path(image_id).exists()

    def load(self, image_id: int) -> np.ndarray | None:
        try:
            return np.load(self.path(image_id), allow_pickle=False)
        except (FileNotFoundError, ValueError, EOFError):  # absent, or another process is mid-write
            return None

    def save(self, image_id: int, mask: np.ndarray) -> None:
        target = self.path(image_id)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, mask, allow_pickle=False)
        os.replace(tmp, target)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
