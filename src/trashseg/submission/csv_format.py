"""The submission format: header `image_id,PredictionString`, one row per test image in
test.json order, `image_id` = the image's file_name, PredictionString = the 256x256 label
mask, row-major, space-separated. The full-resolution LABEL mask is resized with nearest
neighbour (for 512 -> 256 that is mask[::2, ::2])."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

HEADER = "image_id,PredictionString"
SUBMISSION_SIZE = 256
csv.field_size_limit(sys.maxsize)  # a PredictionString is ~131k characters, over csv's default limit


def to_submission_size(labels: np.ndarray, size: int = SUBMISSION_SIZE) -> np.ndarray:
    if labels.shape == (size, size):
        return labels
    return cv2.resize(labels.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def encode_row(labels: np.ndarray) -> str:
    """Labels (< 100) -> '0 0 3 10 ...' without a Python loop per pixel."""
    flat = labels.ravel().astype(np.uint8)
    if flat.size and flat.max() >= 100:
        raise ValueError(f"label {int(flat.max())} has more than two digits; the competition has 11 classes")
    tens, ones = np.divmod(flat, 10)
    chars = np.empty((flat.size, 3), np.uint8)
    chars[:, 0], chars[:, 1], chars[:, 2] = tens + 48, ones + 48, 32
    keep = np.ones_like(chars, dtype=bool)
    keep[:, 0] = tens > 0
    return chars[keep].tobytes()[:-1].decode("ascii")


def decode_row(text: str, size: int = SUBMISSION_SIZE) -> np.ndarray:
    return np.array(text.split(), dtype=np.int64).reshape(size, size)


class SubmissionWriter:
    """Streams rows into `<path>.tmp-<pid>` and renames it to `path` only when complete; on an
    error the temporary file is removed, so no half-written submission is ever left."""

    def __init__(self, path: str | Path, size: int = SUBMISSION_SIZE):
        self.path, self.size = Path(path), size
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.ids: set[str] = set()

    def __enter__(self) -> SubmissionWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "w", newline="")
        self.file.write(HEADER + "\n")
        return self

    def write(self, image_id: str, labels: np.ndarray) -> None:
        if image_id in self.ids:
            raise ValueError(f"image_id {image_id!r} written twice")
        if any(c in image_id for c in ',"\n'):
            raise ValueError(f"image_id {image_id!r} contains a comma, quote or newline")
        self.ids.add(image_id)
        self.file.write(f"{image_id},{encode_row(to_submission_size(labels, self.size))}\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def read_submission(path: str | Path, size: int = SUBMISSION_SIZE) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, label mask) per row, streamed."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for image_id, prediction in reader:
            yield image_id, decode_row(prediction, size)
