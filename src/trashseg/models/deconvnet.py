"""DeconvNet (Noh et al. 2015) with a VGG16-BN encoder: max pooling keeps its indices, fc6/fc7
are convolutions, and a mirrored decoder unpools with those indices and deconvolves with BN.

fc6 uses 'same' padding (the paper's 7x7 valid convolution assumes 224 px inputs)."""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel
from .pretrained import check_pretrained
from .registry import register
from .vgg import VGGEncoder

# Decoder stages, deepest first: output channels of each 3x3 deconvolution, mirroring VGG16.
DECODER_STAGES = [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]


def deconv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.ConvTranspose2d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class DeconvNet(SegmentationModel):
    def __init__(self, num_classes: int, fc_channels: int):
        decoder = nn.Module()
        decoder.fc = nn.Sequential(*conv_bn_relu(512, fc_channels, 7), *conv_bn_relu(fc_channels, fc_channels, 1),
                                   *deconv_bn_relu(fc_channels, 512, 7))
        decoder.unpools = nn.ModuleList(nn.MaxUnpool2d(2, stride=2) for _ in DECODER_STAGES)
        stages, channels = [], 512
        for outs in DECODER_STAGES:
            layers = []
            for out in outs:
                layers += deconv_bn_relu(channels, out)
                channels = out
            stages.append(nn.Sequential(*layers))
        decoder.stages = nn.ModuleList(stages)
        super().__init__(VGGEncoder(batch_norm=True, return_indices=True), decoder, nn.Conv2d(64, num_classes, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        stages, indices, sizes = self.encoder(x)
        y = self.decoder.fc(stages[4])
        for unpool, block, idx, size in zip(self.decoder.unpools, self.decoder.stages, indices[::-1], sizes[::-1]):
            y = block(unpool(y, idx, output_size=size[-2:]))
        return self.head(y)


@register("deconvnet")
def deconvnet(num_classes: int, fc_channels: int = 4096, pretrained=None) -> DeconvNet:
    check_pretrained(pretrained)
    model = DeconvNet(num_classes, fc_channels)
    model.encoder.load_pretrained(pretrained)
    return model
