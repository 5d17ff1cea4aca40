"""A classifier's fc6/fc7 as convolutions (FCN's "convolutionalisation"), shared by FCN,
DeepLab v1 and AlexNet-FCN, and the mapping of ImageNet Linear weights onto them."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def fc_layers(in_channels: int, channels: int, kernel: int, dilation: int = 1, dropout: float = 0.5) -> nn.Sequential:
    """fc6 (kernel x kernel, 'same' output size) and fc7 (1x1), each with ReLU and (element-wise,
    as in the papers' Caffe models) dropout. An even kernel is padded one more on the bottom/right."""
    total = dilation * (kernel - 1)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if total % 2:
        layers["pad6"] = nn.ZeroPad2d((total // 2, total - total // 2) * 2)
    layers.update(
        fc6=nn.Conv2d(in_channels, channels, kernel, padding=0 if total % 2 else total // 2, dilation=dilation),
        relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(dropout),
        fc7=nn.Conv2d(channels, channels, 1), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(dropout),
    )
    return nn.Sequential(layers)


def fc_as_conv(fc6: tuple[torch.Tensor, torch.Tensor], fc7: tuple[torch.Tensor, torch.Tensor], in_channels: int,
               size: int, channels: int, kernel: int) -> dict[str, torch.Tensor]:
    """Linear fc6 (in_channels*size*size -> N) and fc7 (N -> N) weights and biases as the state of
    `fc_layers(in_channels, channels, kernel)`. Same shapes: an exact reshape (FCN). Fewer
    channels or a smaller kernel: filters and taps decimated evenly, as DeepLab v1 LargeFOV made
    its 1024-channel 3x3 fc6 from VGG's 4096-channel 7x7 one."""
    full = fc6[0].shape[0]
    if full % channels or not (kernel == size or (kernel > 1 and (size - 1) % (kernel - 1) == 0)):
        raise ValueError(f"fc6/fc7 of {full} channels, {size}x{size} do not decimate to {channels} channels, {kernel}x{kernel}")
    step, tap = full // channels, 1 if kernel == size else (size - 1) // (kernel - 1)
    return {
        "fc6.weight": fc6[0].view(full, in_channels, size, size)[::step, :, ::tap, ::tap].contiguous(),
        "fc6.bias": fc6[1][::step].contiguous(),
        "fc7.weight": fc7[0][::step, ::step].reshape(channels, channels, 1, 1).contiguous(),
        "fc7.bias": fc7[1][::step].contiguous(),
    }
