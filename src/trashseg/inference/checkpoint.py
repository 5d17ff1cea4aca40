"""Rebuild a model from a training checkpoint without running any pickled code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trashseg.models import build_model


@dataclass
class LoadedCheckpoint:
    path: Path
    model: nn.Module
    cfg: dict

    @property
    def classes(self) -> list[str]:
        return list(self.cfg["data"]["classes"])


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    try:
        cfg = ckpt["hyper_parameters"]["cfg"]
    except KeyError:
        raise ValueError(f"{path} is not a trashseg training checkpoint (no hyper_parameters.cfg)") from None
    model_cfg = {**cfg["model"], "pretrained": None}  # the weights come from the checkpoint
    model = build_model(model_cfg, len(cfg["data"]["classes"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return LoadedCheckpoint(path, model.eval(), cfg)


def same_classes(checkpoints: list[LoadedCheckpoint]) -> list[str]:
    """The shared class list; refuses checkpoints trained on different lists, naming both."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if other.classes != first.classes:
            raise ValueError(f"{other.path} was trained on classes {other.classes} but {first.path} on "
                             f"{first.classes}; ensemble only checkpoints with the same class list")
    return first.classes
