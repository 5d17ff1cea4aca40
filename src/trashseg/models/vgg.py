"""VGG16(-BN) encoder whose `features` are laid out exactly like torchvision's, so ImageNet
weights load one to one; it hands out every pooling stage (for FCN skips) and the pooling
indices (for DeconvNet's unpooling)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import vgg

from .fc import fc_as_conv
from .pretrained import download, load_local

VGG16 = vgg.cfgs["D"]


class VGGEncoder(nn.Module):
    def __init__(self, batch_norm: bool = True, return_indices: bool = False):
        super().__init__()
        self.batch_norm = batch_norm
        self.features = vgg.make_layers(VGG16, batch_norm=batch_norm)
        self.pools = [m for m in self.features if isinstance(m, nn.MaxPool2d)]
        for pool in self.pools:
            pool.return_indices = return_indices
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Size]]:
        """(outputs of pool1..pool5, their indices (empty unless return_indices), sizes before each pool)."""
        stages, indices, sizes = [], [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape)
                x = layer(x)
                if layer.return_indices:
                    x, idx = x
                    indices.append(idx)
                stages.append(x)
            else:
                x = layer(x)
        return stages, indices, sizes

    def make_large_fov(self) -> None:
        """DeepLab v1: 3x3 pools, pool4/pool5 with stride 1 and conv5 dilated by 2 -> output stride 8.
        Only pooling and dilation change, so the parameters still map onto torchvision's."""
        positions = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        for n, i in enumerate(positions):
            self.features[i] = nn.MaxPool2d(3, stride=2 if n < 3 else 1, padding=1)
        for layer in list(self.features)[positions[3] + 1 : positions[4]]:
            if isinstance(layer, nn.Conv2d):
                layer.dilation, layer.padding = (2, 2), (2, 2)
        self.pools = [self.features[i] for i in positions]

    def load_pretrained(self, pretrained) -> dict[str, torch.Tensor] | None:
        """Load ImageNet or local weights; returns the whole downloaded torchvision state dict
        (FCN also takes its fc6/fc7 from it)."""
        if pretrained is None:
            return None
        if pretrained != "imagenet":
            load_local(self, pretrained)
            return None
        weights = vgg.VGG16_BN_Weights.IMAGENET1K_V1 if self.batch_norm else vgg.VGG16_Weights.IMAGENET1K_V1
        state = download(f"torchvision {weights}", lambda: weights.get_state_dict(progress=False))
        self.load_state_dict(torchvision_features(state))
        return state


def torchvision_features(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision vgg16(_bn) state dict -> this encoder's (`features.N.*` are the same keys)."""
    return {k: v for k, v in state.items() if k.startswith("features.")}


def torchvision_fc_as_conv(state: dict[str, torch.Tensor], channels: int = 4096, kernel: int = 7) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 fc6/fc7 (Linear 25088->4096, 4096->4096) as `fc_layers` convolutions."""
    fc6 = state["classifier.0.weight"], state["classifier.0.bias"]
    fc7 = state["classifier.3.weight"], state["classifier.3.bias"]
    return fc_as_conv(fc6, fc7, in_channels=512, size=7, channels=channels, kernel=kernel)
