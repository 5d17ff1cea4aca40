"""Decoding images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 H x W x 3 RGB; one clear line for a missing, truncated or unreadable file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path} (check data.root and the file_name in the JSON)") from None
    if is_truncated_jpeg(data):
        raise ValueError(f"truncated JPEG: {path} (the file ends before the JPEG end marker; re-copy it)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError(f"unreadable image: {path} (not a format OpenCV can decode)")
    return image


def is_truncated_jpeg(data: np.ndarray) -> bool:
    """A JPEG whose end-of-image marker is missing (OpenCV would decode it half grey)."""
    raw = data[:2].tobytes()
    if raw != _JPEG_SOI:
        return False
    tail = data[-64:].tobytes().rstrip(b"\x00")  # some writers pad after the marker
    return not tail.endswith(_JPEG_EOI)
