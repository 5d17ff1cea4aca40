"""Decoding images from disk with errors that name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from torchvision.io import ImageReadMode, decode_image, read_file

# torchvision 0.29 deprecates its decoders in favour of torchcodec, which our pinned torch
# does not support; the decoder is libjpeg-turbo and the fastest here (benchmarks/bench_loader.py).
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 3 x H x W RGB; one clear line for a missing, truncated or unreadable file.

    torchvision's libjpeg-turbo decoder hands over channels-first directly, which saves the
    HWC -> CHW copy that OpenCV's layout would cost on every item.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path} (check data.root and the file_name in the JSON)")
    data = read_file(str(path))
    if is_truncated_jpeg(data):
        raise ValueError(f"truncated JPEG: {path} (the file ends before the JPEG end marker; re-copy it)")
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise ValueError(f"unreadable image: {path} ({str(err).splitlines()[0]})") from None


def is_truncated_jpeg(data: torch.Tensor) -> bool:
    """A JPEG whose end-of-image marker is missing (decoders would fill the rest with grey)."""
    if data[:2].numpy().tobytes() != _JPEG_SOI:
        return False
    tail = data[-64:].numpy().tobytes().rstrip(b"\x00")  # some writers pad after the marker
    return not tail.endswith(_JPEG_EOI)
