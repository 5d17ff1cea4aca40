"""Per-image class probabilities on disk (float16 C x H x W .npy per image id; float32 for the
parts of a sharded run) with an index, so several runs can be ensembled later without re-running
any model. The index records the classes, the model paths and what made the probabilities.

A folder is written whole or not at all: files go to a temporary folder beside it, and close()
puts that in its place, replacing the folder of an earlier run instead of mixing old files with
new ones under one index. A killed writer's temporary folder is removed by the next writer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from trashseg.atomic import disk_full, fsync_dir, remove_stale_temps, temp_path, write_text

INDEX = "index.json"
WRITE_AGAIN = "write it again with inference.py --save-probs"


def is_probs_folder(folder: Path) -> bool:
    """Empty, or holding only what ProbsWriter writes."""
    return all(p.name == INDEX or p.suffix == ".npy" for p in folder.iterdir())


class ProbsWriter:
    def __init__(self, folder: str | Path, classes: list[str], sources: list[str], shard: dict | None = None,
                 made_by: dict | None = None, dtype: type = np.float16):
        """`shard`: {index, count, total} for one part of a run split across processes (inference.shards);
        `made_by`: the settings that made the probabilities (options.settings_record), which a merge
        compares and the ensemble takes `--post` from; `dtype`: the stored precision."""
        self.folder = Path(folder)
        if self.folder.exists() and not (self.folder.is_dir() and is_probs_folder(self.folder)):
            raise FileExistsError(f"--save-probs {self.folder} exists and is not a probabilities folder (it holds "
                                  "other files); choose a new folder")
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        self.tmp = temp_path(self.folder)
        self.tmp.mkdir()
        self.dtype = dtype
        self.index = ({"classes": classes, "sources": sources, "images": []} | ({"shard": shard} if shard else {})
                      | ({"made_by": made_by} if made_by else {}))

    def write(self, image_id: int, file_name: str, probs: np.ndarray) -> None:
        path = self.tmp / f"{image_id}.npy"
        try:
            np.save(path, probs.astype(self.dtype, copy=False))
        except OSError as err:
            self.abort()
            raise disk_full(self.folder / path.name, err) from None
        self.index["images"].append({"id": image_id, "file_name": file_name})

    def adopt(self, image_id: int, file_name: str, source: Path) -> None:
        """An image's probabilities from another folder: a hard link where the file system allows
        (no second copy of 5.8 MB an image), else a copy."""
        path = self.tmp / f"{image_id}.npy"
        try:
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
        except OSError as err:
            self.abort()
            raise disk_full(self.folder / path.name, err) from None
        self.index["images"].append({"id": image_id, "file_name": file_name})

    def close(self) -> None:
        """Write the index and put the folder in place of any earlier one."""
        write_text(self.tmp / INDEX, json.dumps(self.index, indent=1))
        old = None
        if self.folder.exists():
            old = self.folder.with_name(self.tmp.name + "-old")  # a temp name too: cleaned up if we die here
            os.rename(self.folder, old)
        os.rename(self.tmp, self.folder)
        fsync_dir(self.folder.parent)
        if old is not None:
            shutil.rmtree(old)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ProbsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type is not None else self.close()


def read_index(folder: str | Path) -> dict:
    """The folder's index, after checking that every listed file is there and complete."""
    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a --save-probs folder (or that run did not finish)")
    try:
        index = json.loads(path.read_bytes())
        images = index["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}); {WRITE_AGAIN}") from None
    for image in images:
        npy = folder / f"{image['id']}.npy"
        try:
            np.load(npy, mmap_mode="r")  # reads the header and checks the size against it
        except FileNotFoundError:
            raise FileNotFoundError(f"{npy} is missing from the probabilities folder; {WRITE_AGAIN}") from None
        except (ValueError, EOFError) as err:
            raise ValueError(f"{npy} is truncated or not a .npy file ({err}); {WRITE_AGAIN}") from None
    return index
