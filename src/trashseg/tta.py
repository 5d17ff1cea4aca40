"""Test-time augmentation views: pairs of (forward, inverse) on N x C x H x W tensors.

A neutral module (it imports nothing of ours): inference averages predictions over the views,
and so does training when a distillation teacher runs with TTA."""

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


def tta_views(mode: str, option: str = "--tta") -> list[View]:
    """`option` names the setting in the error (a CLI flag, or a config key such as distill.tta)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown {option} {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return TTA_MODES[mode]
