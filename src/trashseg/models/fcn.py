"""FCN-32s / 16s / 8s on VGG16 (Long et al. 2015): fc6/fc7 as convolutions, 1x1 score layers,
skip fusion of pool4 (16s) and pool3 (8s) scores, learnable upsampling initialised bilinear.

Instead of the paper's 100 px input padding, fc6 keeps the resolution ('same' padding) and
the input is padded to a multiple of 32 (the shared contract)."""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel, bilinear_upsampler
from .fc import fc_layers
from .pretrained import check_pretrained
from .registry import register
from .vgg import VGGEncoder, torchvision_fc_as_conv


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)  # the paper zero-initialises the skip score layers
    nn.init.zeros_(conv.bias)
    return conv


class FCN(SegmentationModel):
    def __init__(self, num_classes: int, variant: str, batch_norm: bool, fc_channels: int):
        strides = {"32s": 32, "16s": 16, "8s": 8}
        if variant not in strides:
            raise ValueError(f"FCN variant must be one of {list(strides)}, not {variant!r}")
        head = nn.ModuleDict({"score_fr": nn.Conv2d(fc_channels, num_classes, 1)})
        if variant in ("16s", "8s"):
            head["score_pool4"], head["up_pool4"] = zero_conv(512, num_classes), bilinear_upsampler(num_classes, 2)
        if variant == "8s":
            head["score_pool3"], head["up_pool3"] = zero_conv(256, num_classes), bilinear_upsampler(num_classes, 2)
        head["up_final"] = bilinear_upsampler(num_classes, strides[variant])
        super().__init__(VGGEncoder(batch_norm), fc_layers(512, fc_channels, 7), head)
        self.variant = variant

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        stages, _, _ = self.encoder(x)
        score = self.head.score_fr(self.decoder(stages[4]))
        if self.variant in ("16s", "8s"):
            score = self.head.up_pool4(score) + self.head.score_pool4(stages[3])
        if self.variant == "8s":
            score = self.head.up_pool3(score) + self.head.score_pool3(stages[2])
        return self.head.up_final(score)


@register("fcn")
def fcn(num_classes: int, variant: str = "8s", batch_norm: bool = False, fc_channels: int = 4096, pretrained=None) -> FCN:
    check_pretrained(pretrained)
    model = FCN(num_classes, variant, batch_norm, fc_channels)
    state = model.encoder.load_pretrained(pretrained)
    if state is not None and 4096 % fc_channels == 0:  # ImageNet fc6/fc7 as convolutions, as the paper does
        model.decoder.load_state_dict(torchvision_fc_as_conv(state, fc_channels, kernel=7))
    return model
