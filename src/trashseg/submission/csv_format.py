"""The submission format: header `image_id,PredictionString`, one row per test image in
test.json order, `image_id` = the image's file_name, PredictionString = the 256x256 label
mask, row-major, space-separated. The full-resolution LABEL mask is resized with nearest
neighbour (for 512 -> 256 that is mask[::2, ::2])."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from trashseg.atomic import atomic_write

HEADER = "image_id,PredictionString"
SUBMISSION_SIZE = 256
csv.field_size_limit(sys.maxsize)  # a PredictionString is ~131k characters, over csv's default limit


def to_submission_size(labels: np.ndarray, size: int = SUBMISSION_SIZE) -> np.ndarray:
    if labels.shape == (size, size):
        return labels
    return cv2.resize(labels.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def encode_row(labels: np.ndarray) -> str:
    """Labels (0..99) -> '0 0 3 10 ...' without a Python loop per pixel."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= 100):  # before the uint8 cast wraps 256 to 0
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ValueError(f"label {bad} is outside 0..99; the competition has 11 classes (0..10)")
    flat = labels.ravel().astype(np.uint8)
    tens, ones = np.divmod(flat, 10)
    chars = np.empty((flat.size, 3), np.uint8)
    chars[:, 0], chars[:, 1], chars[:, 2] = tens + 48, ones + 48, 32
    keep = np.ones_like(chars, dtype=bool)
    keep[:, 0] = tens > 0
    return chars[keep].tobytes()[:-1].decode("ascii")


def decode_row(text: str, size: int = SUBMISSION_SIZE) -> np.ndarray:
    values = text.split()
    if len(values) != size * size:
        raise ValueError(f"{len(values)} labels, expected {size * size} ({size}x{size})")
    if not all(v.isascii() and v.isdigit() for v in set(values)):
        raise ValueError("labels that are not non-negative integers")
    return np.array(values, dtype=np.int64).reshape(size, size)


class SubmissionWriter:
    """Streams rows into a temporary file beside `path` and renames it to `path` only when complete
    (trashseg.atomic); on an error the temporary file is removed, so no half-written submission is
    ever left, and one that a killed process left is removed by the next writer."""

    def __init__(self, path: str | Path, size: int = SUBMISSION_SIZE):
        self.path, self.size = Path(path), size
        self.ids: set[str] = set()

    def __enter__(self) -> SubmissionWriter:
        self._writing = atomic_write(self.path, "w", newline="", encoding="utf-8")
        self.file = self._writing.__enter__()
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
        self._writing.__exit__(exc_type, exc, tb)


def read_submission(path: str | Path, size: int = SUBMISSION_SIZE) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, label mask) per row, streamed; a bad row is one line naming the file and line."""
    path = Path(path)
    fix = f"check it with python -m trashseg.submission check {path} --test-json TEST_JSON"
    with open(path, newline="", encoding="utf-8") as f:
        try:
            header = f.readline().rstrip("\r\n")
            if header != HEADER:
                raise ValueError(f"{path}: bad header {header[:60]!r}, expected {HEADER!r}: not a submission CSV")
            for line_no, row in enumerate(csv.reader(f), start=2):
                if len(row) != 2:
                    raise ValueError(f"{path} line {line_no}: {len(row)} fields, expected 2; {fix}")
                try:
                    yield row[0], decode_row(row[1], size)
                except ValueError as err:
                    raise ValueError(f"{path} line {line_no}: {err}; {fix}") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a text CSV (byte {err.start} is not UTF-8); {fix}") from None
