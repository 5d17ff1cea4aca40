"""Files that are only ever absent, the old version or the complete new one.

A file is written to a temporary name in its destination folder, fsynced, and renamed over the
destination; the folder is fsynced so the rename survives a power cut. The temporary file must
live in the destination folder: from another file system (a tmpfs $TMPDIR, a bucket mount) the
rename would be a copy, and a kill during the copy leaves a truncated file under the final name.
Temporary names are `.<name>.tmp-<pid>`; a later writer of the same file removes those that a
killed process left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TMP_MARK = ".tmp-"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OSError):
    """No space left while writing a file; the destination was left as it was."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def stale_temps(path: Path) -> list[Path]:
    """Temporary files (or folders) of `path` left by writers that never finished."""
    prefix = f".{path.name}{TMP_MARK}"
    return [p for p in path.parent.iterdir() if p.name.startswith(prefix)] if path.parent.is_dir() else []


def remove_stale_temps(path: Path) -> None:
    for stale in stale_temps(path):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_full(path: Path, err: OSError) -> OSError:
    """`err` as a one-line DiskFullError when it is one, else unchanged."""
    if err.errno not in _DISK_FULL:
        return err
    return DiskFullError(err.errno, f"no space left on the device while writing {path} (the file was left as it "
                                    f"was); free space in {path.parent} and run again")


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path`, on any error (or
    interrupt) it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and (full := disk_full(path, err)) is not err:
            raise full from None
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def remove_temps_in(folder: Path) -> None:
    """Remove every temporary file a killed writer left in `folder`."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and TMP_MARK in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
