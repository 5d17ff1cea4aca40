"""Softmax probabilities averaged over models (weighted), TTA views and scales.

A model is any source with a `net(device)`: a training checkpoint (`LoadedCheckpoint`, PyTorch)
or an exported file (`LoadedExport`: ONNX through onnxruntime, or TorchScript). A net maps
pixels N x 3 x H x W (uint8, or float in 0..255 after a rescale) to logits N x C x H x W on
the same device, normalising inside; everything else (views, scales, weights) happens here
once, for every backend alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch.nn import functional as F

from .tta import tta_views

Net = Callable[[torch.Tensor], torch.Tensor]


class ModelSource(Protocol):
    path: Path
    cfg: dict

    @property
    def classes(self) -> list[str]: ...

    def net(self, device: str | torch.device = "cpu") -> Net: ...


class Predictor:
    def __init__(self, sources: Sequence[ModelSource], weights: Sequence[float] | None = None,
                 tta: str = "none", scales: Sequence[float] = (1.0,), device: str = "cpu"):
        weights = list(weights) if weights else [1.0] * len(sources)
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} --weights for {len(sources)} checkpoints; give one per checkpoint")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.device = torch.device(device)
        self.views = tta_views(tta)
        self.scales = list(scales)
        self.nets = [s.net(self.device) for s in sources]

    @torch.inference_mode()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float32 N x C x H x W class probabilities."""
        images = images.to(self.device, non_blocking=True)
        size = images.shape[-2:]
        out = None
        per_model = 1.0 / (len(self.views) * len(self.scales))
        for net, weight in zip(self.nets, self.weights):
            for scale in self.scales:
                # pixels are rescaled before the net normalises: the same as rescaling normalised
                # images (the normalisation is affine per channel), and exported nets take pixels
                x = images if scale == 1.0 else F.interpolate(images.float(), scale_factor=scale, mode="bilinear",
                                                              align_corners=False)
                for forward, inverse in self.views:
                    p = inverse(net(forward(x)).softmax(1))
                    if p.shape[-2:] != size:
                        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                    p = p * (weight * per_model)
                    out = p if out is None else out + p
        return out

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Labels N x H x W: argmax at the input's (full) resolution."""
        return self.probs(images).argmax(1)
