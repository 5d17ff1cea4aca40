"""Per-image class probabilities on disk (float16 C x H x W .npy per image id) with an index,
so several runs can be ensembled later without re-running any model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class ProbsWriter:
    def __init__(self, folder: str | Path, classes: list[str], sources: list[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = {"classes": classes, "sources": sources, "images": []}

    def write(self, image_id: int, file_name: str, probs: np.ndarray) -> None:
        np.save(self.folder / f"{image_id}.npy", probs.astype(np.float16))
        self.index["images"].append({"id": image_id, "file_name": file_name})

    def close(self) -> None:
        (self.folder / "index.json").write_text(json.dumps(self.index, indent=1))


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a --save-probs folder (or that run did not finish)")
    return json.loads(path.read_text())
