"""AlexNet-FCN (the FCN paper's AlexNet variant): AlexNet features, fc6 (6x6, AlexNet's pool5
size) and fc7 as convolutions, a 1x1 convolution to classes and a learnable x32 upsampling
initialised bilinear. AlexNet's strides do not divide sizes exactly; the shared base resizes
the upsampled scores to the input."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import AlexNet_Weights
from torchvision.models import alexnet as tv_alexnet

from .base import SegmentationModel, bilinear_upsampler
from .fc import fc_as_conv, fc_layers
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

    def load_pretrained(self, pretrained) -> dict[str, torch.Tensor] | None:
        """Load ImageNet or local weights; returns the downloaded torchvision state (for fc6/fc7)."""
        if pretrained is None:
            return None
        if pretrained != "imagenet":
            load_local(self, pretrained)
            return None
        weights = AlexNet_Weights.IMAGENET1K_V1
        state = download(f"torchvision {weights}", lambda: weights.get_state_dict(progress=False))
        self.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
        return state


class AlexNetFCN(SegmentationModel):
    def __init__(self, num_classes: int, fc_channels: int):
        head = nn.Sequential(nn.Conv2d(fc_channels, num_classes, 1), bilinear_upsampler(num_classes, 32))
        super().__init__(AlexNetEncoder(), fc_layers(256, fc_channels, 6), head)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register("alexnet_fcn")
def alexnet_fcn(num_classes: int, fc_channels: int = 4096, pretrained=None) -> AlexNetFCN:
    check_pretrained(pretrained)
    model = AlexNetFCN(num_classes, fc_channels)
    state = model.encoder.load_pretrained(pretrained)
    if state is not None and 4096 % fc_channels == 0:  # torchvision's classifier.1/.4 are fc6/fc7
        fc6, fc7 = (state["classifier.1.weight"], state["classifier.1.bias"]), (state["classifier.4.weight"], state["classifier.4.bias"])
        model.decoder.load_state_dict(fc_as_conv(fc6, fc7, in_channels=256, size=6, channels=fc_channels, kernel=6))
    return model
