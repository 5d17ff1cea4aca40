"""Test-time augmentation views: pairs of (forward, inverse) on N x C x H x W tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _flip(dims: tuple[int, ...]) -> View:
    return (lambda x: x.flip(dims), lambda x: x.flip(dims)) if dims else (lambda x: x, lambda x: x)


def _rot(k: int, flip: bool) -> View:
    def forward(x):
        x = x.flip(-1) if flip else x
        return torch.rot90(x, k, dims=(-2, -1))

    def inverse(x):
        x = torch.rot90(x, -k, dims=(-2, -1))
        return x.flip(-1) if flip else x

    return forward, inverse


TTA_MODES = {
    "none": [_flip(())],
    "hflip": [_flip(()), _flip((-1,))],
    "vflip": [_flip(()), _flip((-2,))],
    "hvflip": [_flip(()), _flip((-1,)), _flip((-2,)), _flip((-2, -1))],
    "d4": [_rot(k, flip) for flip in (False, True) for k in range(4)],  # the 8 symmetries of the square
}


def tta_views(mode: str) -> list[View]:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown --tta {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return TTA_MODES[mode]
