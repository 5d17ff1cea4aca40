"""A training checkpoint loaded for prediction (trashseg.checkpoint rebuilds it without running
any pickled code), refused when its weights hold NaN or inf."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trashseg.checkpoint import NormalisedNet, load_network


@dataclass
class LoadedCheckpoint:
    path: Path
    model: nn.Module
    cfg: dict

    @property
    def classes(self) -> list[str]:
        return list(self.cfg["data"]["classes"])

    @property
    def run_name(self) -> str:
        """The run folder's name (runs/<experiment>/<run>/checkpoints/best.ckpt -> <run>)."""
        return self.path.resolve().parent.parent.name

    def net(self, device: str | torch.device = "cpu") -> NormalisedNet:
        """In the precision and memory format the run trained in."""
        return NormalisedNet(self.model, self.cfg, torch.device(device))


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """One line (FileNotFoundError or ValueError) for a missing, truncated, foreign or code-holding file,
    or one whose weights hold NaN or inf."""
    path = Path(path)
    model, cfg = load_network(path)  # weights_only: tensors and plain containers only
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {name} holds NaN or inf, so would every prediction (the run diverged before this "
                             "checkpoint was written); use an earlier checkpoint of the run (checkpoints/best.ckpt)")
    return LoadedCheckpoint(path, model, cfg)


def same_classes(sources: list) -> list[str]:
    """The shared class list of checkpoints and exported models; refuses models trained on
    different lists, naming both."""
    first = sources[0]
    for other in sources[1:]:
        if other.classes != first.classes:
            raise ValueError(f"{other.path} was trained on classes {other.classes} but {first.path} on "
                             f"{first.classes}; ensemble only models with the same class list")
    return first.classes
