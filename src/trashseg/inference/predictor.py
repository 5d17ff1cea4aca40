"""Softmax probabilities averaged over checkpoints (weighted), TTA views and scales."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from trashseg.data.normalize import Normalize

from .checkpoint import LoadedCheckpoint
from .tta import tta_views


class Predictor:
    def __init__(self, checkpoints: Sequence[LoadedCheckpoint], weights: Sequence[float] | None = None,
                 tta: str = "none", scales: Sequence[float] = (1.0,), device: str = "cpu"):
        weights = list(weights) if weights else [1.0] * len(checkpoints)
        if len(weights) != len(checkpoints):
            raise ValueError(f"{len(weights)} --weights for {len(checkpoints)} checkpoints; give one per checkpoint")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.device = torch.device(device)
        self.models = [c.model.to(self.device).eval() for c in checkpoints]
        self.normalizers = [Normalize(c.cfg["data"]["mean"], c.cfg["data"]["std"]).to(self.device) for c in checkpoints]
        self.views = tta_views(tta)
        self.scales = list(scales)
        if self.device.type == "cuda":
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]

    @torch.inference_mode()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float32 N x C x H x W class probabilities."""
        images = images.to(self.device, non_blocking=True)
        size = images.shape[-2:]
        out = None
        per_model = 1.0 / (len(self.views) * len(self.scales))
        for model, normalize, weight in zip(self.models, self.normalizers, self.weights):
            x = normalize(images)
            for scale in self.scales:
                xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                for forward, inverse in self.views:
                    with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                        logits = model(forward(xs))
                    p = inverse(logits.float().softmax(1))
                    if p.shape[-2:] != size:
                        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                    p = p * (weight * per_model)
                    out = p if out is None else out + p
        return out

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Labels N x H x W: argmax at the input's (full) resolution."""
        return self.probs(images).argmax(1)
