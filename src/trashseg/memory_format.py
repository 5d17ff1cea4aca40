"""One channels_last switch for training and inference, weights and inputs together.

A convolution runs in channels_last only when both its input and its weight are in it; a
channels_last input against contiguous weights makes oneDNN / cuDNN reorder one of them at every
call. `channels_last: auto` turns it on for CUDA (tensor cores) and off on a CPU, where what it buys
depends on the model and the CPU (1.39x a unet_lite0 training step here: docs/results/cpu_path.md);
true / false force it.
"""

from __future__ import annotations

import torch
from torch import nn

CHOICES = ("auto", True, False)


def wants_channels_last(setting: str | bool | None, device: torch.device | str) -> bool:
    """Whether a model on `device` runs channels_last; null (a config from before the key) is auto."""
    if setting is None or setting == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"channels_last={setting!r} is not a choice; give auto, true or false")


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d weights in channels_last, in place (the Parameters stay the same objects,
    so an optimizer built on them is unaffected)."""
    return model.to(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
