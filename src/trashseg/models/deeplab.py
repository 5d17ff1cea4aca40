"""DeepLab v1 (VGG16 LargeFOV) and v2 (ResNet-101 with ASPP), Chen et al. 2015 / 2017.
v3 and v3+ come from torchvision and smp (see torchvision_models.py, smp_models.py)."""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from .fc import fc_layers
from .pretrained import check_pretrained
from .registry import register
from .resnet import ResNetEncoder
from .vgg import VGGEncoder, torchvision_fc_as_conv


class DeepLabV1(SegmentationModel):
    """LargeFOV: output stride 8, fc6 a 3x3 convolution dilated by 12 with 1024 channels;
    logits are upsampled bilinearly (no CRF here)."""

    pad_multiple = 8

    def __init__(self, num_classes: int, batch_norm: bool, fc_channels: int):
        encoder = VGGEncoder(batch_norm)
        encoder.make_large_fov()
        super().__init__(encoder, fc_layers(512, fc_channels, 3, dilation=12), nn.Conv2d(fc_channels, num_classes, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0][4]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.features(x)))


class ASPPv2(nn.Module):
    """DeepLab v2's ASPP: parallel 3x3 atrous convolutions straight to class scores, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(SegmentationModel):
    pad_multiple = 8

    def __init__(self, num_classes: int, backbone: str, rates):
        # ASPP maps features to classes directly: the head is all there is after the encoder.
        super().__init__(ResNetEncoder(backbone, output_stride=8), nn.Identity(), ASPPv2(2048, num_classes, rates))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)[-1]))


@register("deeplabv1")
def deeplabv1(num_classes: int, batch_norm: bool = False, fc_channels: int = 1024, pretrained=None) -> DeepLabV1:
    check_pretrained(pretrained)
    model = DeepLabV1(num_classes, batch_norm, fc_channels)
    state = model.encoder.load_pretrained(pretrained)
    if state is not None and 4096 % fc_channels == 0:  # fc6/fc7 decimated from ImageNet's, as the paper does
        model.decoder.load_state_dict(torchvision_fc_as_conv(state, fc_channels, kernel=3))
    return model


@register("deeplabv2")
def deeplabv2(num_classes: int, backbone: str = "resnet101", rates: tuple = (6, 12, 18, 24), pretrained=None) -> DeepLabV2:
    check_pretrained(pretrained)
    model = DeepLabV2(num_classes, backbone, tuple(rates))
    model.encoder.load_pretrained(pretrained)
    return model
