"""Rasterised masks (and copy-paste object crops) on disk, shared across epochs, DataLoader
workers, runs and annotation files.

Entries are addressed by content: a mask's key hashes everything the mask depends on (its
image's annotations in file order, the image size, the class list, the overlap policy, the crowd
mode and this module's format version), never the file it was read from. train.json, val.json,
train_all.json, every fold file and each pseudo-label round that repeat an image's annotations
share one entry, and an edit of any input selects another: a stale mask is never read.

A cache that cannot be written (a read-only folder, a full disk) never stops training: one
warning line, entries already there are still read, the rest is rasterised each time, and no
temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trashseg.atomic import temp_path

from .masks import SegObject

CACHE_VERSION = 2  # 1: one folder per annotation file's bytes, .npy masks
CACHE_ENV = "TRASHSEG_CACHE"
# zlib at level 1: a label mask shrinks ~60x and inflates as fast as a .npy loads, well under a
# JPEG decode (docs/results/disk.md); its checksum also turns a torn entry into a miss.
ZLIB_LEVEL = 1
# Folders a write failed in: every cache on one of them stops writing for the rest of the process
# (the train and val datasets too), and the warning is given once.
_unwritable: set[Path] = set()


class CacheWriteWarning(UserWarning):
    """The cache folder cannot be written; training goes on without writing to it."""


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "trashseg" / "masks"))


def mask_key(objects: Sequence[SegObject], height: int, width: int, classes: Sequence[str], overlap: str,
             crowd: str) -> str:
    """The hash of everything one image's mask depends on, and of nothing else (not its id, file
    name or annotation file): every file holding the image with the same annotations shares it."""
    content = [CACHE_VERSION, list(classes), overlap, crowd, int(height), int(width),
               [[o.label, o.segmentation, o.iscrowd] for o in objects]]
    # sort_keys: an RLE's {"size", "counts"} in either order is the same mask
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, mask, allow_pickle=False)
    return zlib.compress(buffer.getbuffer(), ZLIB_LEVEL)


def decode_mask(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)


class MaskCache:
    """Entries under `<root>/v2/<kind>/<key[:2]>/<key><suffix>`, each written atomically."""

    def __init__(self, root: str | Path):
        self.folder = Path(root) / f"v{CACHE_VERSION}"
        probe = temp_path(self.folder / "probe")
        try:  # a read-only or full disk shows here, once, before any DataLoader worker exists
            self.folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
            self._stop_writing(err)

    @property
    def writable(self) -> bool:
        return self.folder not in _unwritable

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.folder / kind / key[:2] / f"{key}{suffix}"

    def mask_path(self, key: str) -> Path:
        return self.path("masks", key, ".npy.zlib")

    def has_mask(self, key: str) -> bool:
        return self.mask_path(key).is_file()

    def load_mask(self, key: str) -> np.ndarray | None:
        try:
            return decode_mask(self.mask_path(key).read_bytes())
        except (OSError, ValueError, EOFError, zlib.error):  # absent, unreadable, or torn by a crash
            return None

    def save_mask(self, key: str, mask: np.ndarray) -> None:
        self.write(self.mask_path(key), encode_mask(mask))

    def write(self, path: Path, data: bytes) -> bool:
        """`data` to `path` through a temporary file renamed into place (no fsync: a torn entry is
        only a miss). False, after one warning, if the cache cannot be written."""
        if not self.writable:
            return False
        tmp = temp_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return True
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._stop_writing(err)
            return False

    def _stop_writing(self, err: OSError) -> None:
        if self.writable:
            _unwritable.add(self.folder)
            warnings.warn(f"mask cache {self.folder} cannot be written ({err.strerror or err}); training goes on "
                          f"without writing to it: free space there, or set data.cache_dir (or ${CACHE_ENV}) to a "
                          "writable folder, or data.cache_dir=false", CacheWriteWarning, stacklevel=3)
