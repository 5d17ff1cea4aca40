"""A torchvision ResNet without its classifier, keeping torchvision's parameter names so
ImageNet weights load as they are; dilation replaces the last strides (output stride 8/16)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from .pretrained import download, load_local

WEIGHTS = {"resnet50": resnet.ResNet50_Weights.IMAGENET1K_V1, "resnet101": resnet.ResNet101_Weights.IMAGENET1K_V1}


class ResNetEncoder(nn.Module):
    def __init__(self, depth_name: str = "resnet101", output_stride: int = 8):
        super().__init__()
        if depth_name not in WEIGHTS:
            raise ValueError(f"backbone must be one of {list(WEIGHTS)}, not {depth_name!r}")
        dilation = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
        net = getattr(resnet, depth_name)(weights=None, replace_stride_with_dilation=dilation)
        self.name = depth_name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def load_pretrained(self, pretrained) -> None:
        if pretrained is None:
            return
        if pretrained != "imagenet":
            load_local(self, pretrained)
            return
        weights = WEIGHTS[self.name]
        state = download(f"torchvision {weights}", lambda: weights.get_state_dict(progress=False))
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
