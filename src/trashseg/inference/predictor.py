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

from trashseg.tta import tta_views

Net = Callable[[torch.Tensor], torch.Tensor]


class ModelSource(Protocol):
    path: Path
    cfg: dict

    @property
    def classes(self) -> list[str]: ...

    def net(self, device: str | torch.device = "cpu") -> Net: ...


class NonFiniteLogitsError(ValueError):
    """A model gave NaN or inf logits: its argmax, or an ensemble's sum, would be garbage."""


def nonfinite_message(path: Path, net) -> str:
    if not hasattr(net, "compute_dtype"):  # an exported model
        return f"{path} gave NaN or inf logits for this batch; check these images, or export the checkpoint again"
    if net.compute_dtype == torch.float16:
        cause = ("computed in float16 as the run trained (16-mixed), and float16 overflowed inside the network; "
                 "--device cpu predicts it in float32")
    else:
        dtype = str(net.compute_dtype or torch.float32).removeprefix("torch.")
        cause = (f"computed in {dtype}; its weights are finite (checked at load), so these images drive the network "
                 "out of range: check them, or use another checkpoint")
    return f"{path} gave NaN or inf logits for this batch ({cause})"


def normalised_weights(weights: Sequence[float] | None, n: int, flag: str, item: str) -> list[float]:
    """One weight per `item` (checkpoint, probabilities folder), summing to 1 (default: equal): the
    averaged probabilities stay probabilities, as --post crf needs."""
    weights = list(weights) if weights else [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} {flag} for {n} {item}s; give one per {item}")
    total = sum(weights)
    return [w / total for w in weights]


class Predictor:
    def __init__(self, sources: Sequence[ModelSource], weights: Sequence[float] | None = None,
                 tta: str = "none", scales: Sequence[float] = (1.0,), device: str = "cpu",
                 resize: Sequence[int] | None = None):
        """`resize` (H, W): predict every image at that size, e.g. the size training validated at
        when the data mixes frame shapes, and bring its probabilities back to the image's own size."""
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ValueError(f"--resize {' '.join(map(str, resize))}: give a height and a width in pixels, e.g. --resize 90 120")
        self.resize = tuple(int(v) for v in resize) if resize is not None else None
        self.weights = normalised_weights(weights, len(sources), "--weights", "checkpoint")
        self.device = torch.device(device)
        self.views = tta_views(tta)
        self.scales = list(scales)
        self.nets = [s.net(self.device) for s in sources]
        self.paths = [s.path for s in sources]

    @torch.inference_mode()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float32 N x C x H x W class probabilities."""
        images = images.to(self.device, non_blocking=True)
        size = images.shape[-2:]
        out = None
        per_model = 1.0 / (len(self.views) * len(self.scales))
        finite = []  # per model, on the device: one host sync per batch, below
        for net, weight in zip(self.nets, self.weights):
            finite.append(torch.ones((), dtype=torch.bool, device=self.device))
            for scale in self.scales:
                # pixels are rescaled before the net normalises: the same as rescaling normalised
                # images (the normalisation is affine per channel), and exported nets take pixels
                x = images if scale == 1.0 else F.interpolate(images.float(), scale_factor=scale, mode="bilinear",
                                                              align_corners=False)
                for forward, inverse in self.views:
                    logits = net(forward(x))
                    finite[-1] = finite[-1] & torch.isfinite(logits).all().to(self.device)
                    p = inverse(logits.softmax(1))
                    if p.shape[-2:] != size:
                        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                    p = p * (weight * per_model)
                    out = p if out is None else out + p
        for path, net, ok in zip(self.paths, self.nets, torch.stack(finite).tolist()):
            if not ok:
                raise NonFiniteLogitsError(nonfinite_message(path, net))
        return out

    def probs_per_image(self, images: torch.Tensor, sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """C x h x w probabilities of each image of a padded batch at its own size (h, w)."""
        if self.resize is None:
            probs = self.probs(images)
            return [probs[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
        # each image leaves its padding behind before the resize, so every one is seen as training saw it
        resized = torch.cat([F.interpolate(images[i:i + 1, :, :h, :w].float(), size=self.resize, mode="bilinear",
                                           align_corners=False) for i, (h, w) in enumerate(sizes)])
        probs = self.probs(resized)
        return [F.interpolate(probs[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)[0]
                for i, (h, w) in enumerate(sizes)]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Labels N x H x W: argmax at the input's (full) resolution."""
        return self.probs(images).argmax(1)
