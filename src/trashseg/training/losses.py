"""Losses from config: a weighted sum of terms, each honouring ignore_index (255).

    loss:
      terms:
        - {name: ce, weight: 1.0, params: {label_smoothing: 0.05, class_weights: [...]}}
        - {name: dice, weight: 0.5}
Names: ce, dice, focal, lovasz, jaccard (the last four from segmentation_models_pytorch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from trashseg.data.classes import IGNORE_INDEX

SMP_LOSSES = {"dice": smp_losses.DiceLoss, "focal": smp_losses.FocalLoss, "lovasz": smp_losses.LovaszLoss,
              "jaccard": smp_losses.JaccardLoss}


class ValidPixels(nn.Module):
    """Runs `loss` on the pixels whose target is not ignored (for losses without ignore_index)."""

    def __init__(self, loss: nn.Module, ignore_index: int):
        super().__init__()
        self.loss, self.ignore_index = loss, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != self.ignore_index
        pixels = logits.permute(0, 2, 3, 1)[keep]  # P x C
        return self.loss(pixels.t().reshape(1, -1, pixels.shape[0], 1), target[keep].reshape(1, -1, 1))


def build_term(name: str, params: Mapping, ignore_index: int, num_classes: int | None = None) -> nn.Module:
    params = dict(params)
    if name == "ce":
        weights = params.pop("class_weights", None)
        if weights and num_classes is not None and len(weights) != num_classes:
            # CrossEntropyLoss would only fail at the first step, deep in a traceback.
            raise ValueError(f"loss: ce class_weights has {len(weights)} values but data.classes has {num_classes}; "
                             "give one weight per class, in data.classes order")
        return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
                                   ignore_index=ignore_index, **params)
    if name not in SMP_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose ce, {', '.join(SMP_LOSSES)}")
    if name == "jaccard":  # smp's Jaccard has no ignore_index
        return ValidPixels(SMP_LOSSES[name](mode="multiclass", **params), ignore_index)
    return SMP_LOSSES[name](mode="multiclass", ignore_index=ignore_index, **params)


class WeightedLoss(nn.Module):
    def __init__(self, terms: Sequence[Mapping], ignore_index: int = IGNORE_INDEX, num_classes: int | None = None):
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty; give at least one term such as {name: ce}")
        self.ignore_index = ignore_index
        self.names = [t["name"] for t in terms]
        self.weights = [float(t.get("weight", 1.0)) for t in terms]
        self.terms = nn.ModuleList(build_term(t["name"], t.get("params") or {}, ignore_index, num_classes)
                                   for t in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        if not (target != self.ignore_index).any():
            # No labelled pixel (all 255, e.g. crowd or padding only): CE and focal would give 0/0 = NaN,
            # lovasz an empty tensor, jaccard an error. Zero, still attached to every parameter's graph.
            return logits.new_zeros((), dtype=torch.float32) + 0.0 * logits.float().sum()
        return sum(w * term(logits.float(), target) for w, term in zip(self.weights, self.terms))
