"""The contract every model keeps (docs/CONTRACTS.md).

Submodules `encoder`, `decoder`, `head` own all parameters; `forward` takes any H x W, pads
to the model's stride, and returns logits N x C x H x W (in training with an auxiliary head
configured: `{"out": logits, "aux": aux_logits}`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right so H and W are multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = math.ceil(h / multiple) * multiple - h, math.ceil(w / multiple) * multiple - w
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def fit_to(logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Logits of the padded input -> logits at the original size (upsample if coarser, then crop)."""
    if tuple(logits.shape[-2:]) != padded:
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    return logits[..., : size[0], : size[1]]


class SegmentationModel(nn.Module):
    """Families implement `logits(x)` on a padded input: a tensor, or (main, aux) when the
    family has an auxiliary head; logits may be coarser than the input."""

    pad_multiple = 32

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, aux_loss: bool = False):
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.aux_loss = aux_loss

    def logits(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        size = tuple(x.shape[-2:])
        x = pad_to_multiple(x, self.pad_multiple)
        padded = tuple(x.shape[-2:])
        out = self.logits(x)
        main, aux = out if isinstance(out, tuple) else (out, None)
        main = fit_to(main, padded, size)
        if self.training and self.aux_loss and aux is not None:
            return {"out": main, "aux": fit_to(aux, padded, size)}
        return main


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """ConvTranspose2d weight that performs bilinear upsampling channel by channel (FCN's init)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight


def bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable x`factor` upsampling initialised to bilinear; output is exactly input * factor."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up
