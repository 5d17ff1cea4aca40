"""AlexNet-FCN (the FCN paper's AlexNet variant): AlexNet features, fc6/fc7 as convolutions,
a 1x1 convolution to classes and a learnable x32 upsampling initialised bilinear.
AlexNet's strides do not divide sizes exactly; the shared base resizes to the input."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import alexnet as tv_alexnet
from torchvision.models import AlexNet_Weights

from .base import SegmentationModel, bilinear_upsampler
from .fcn import fc_layers
from .pretrained import check_pretrained, download, load_local
from .registry import register


class AlexNetEncoder(nn.Module):
    """torchvision's `features`, under the same names."""

    def __init__(self):
        super().__init__()
        self.features = tv_alexnet(weights=None).features
        self.out_channels = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, pretrained) -> None:
        keep = lambda state: {k: v for k, v in state.items() if k.startswith("features.")}  # noqa: E731
        if pretrained == "imagenet":
            weights = AlexNet_Weights.IMAGENET1K_V1
            self.load_state_dict(keep(download(f"torchvision {weights}", lambda: weights.get_state_dict(progress=False))))
        elif pretrained is not None:
            load_local(self, pretrained, keep)


class AlexNetFCN(SegmentationModel):
    def __init__(self, num_classes: int, fc_channels: int):
        head = nn.Sequential(nn.Conv2d(fc_channels, num_classes, 1), bilinear_upsampler(num_classes, 32))
        super().__init__(AlexNetEncoder(), fc_layers(256, fc_channels, 3), head)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register("alexnet_fcn")
def alexnet_fcn(num_classes: int, fc_channels: int = 4096, pretrained=None) -> AlexNetFCN:
    check_pretrained(pretrained)
    model = AlexNetFCN(num_classes, fc_channels)
    model.encoder.load_pretrained(pretrained)
    return model
