"""Rebuild a model from a training checkpoint without running any pickled code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trashseg.checkpoint_file import CheckpointFileError, read_checkpoint, run_config
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
    """One line (FileNotFoundError or ValueError) for a missing, truncated, foreign or code-holding file."""
    path = Path(path)
    ckpt = read_checkpoint(path)  # weights_only: tensors and plain containers only
    cfg = run_config(ckpt, path)
    model_cfg = {**cfg["model"], "pretrained": None}  # the weights come from the checkpoint
    model = build_model(model_cfg, len(cfg["data"]["classes"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointFileError(f"{path}: its weights do not fit the model its config describes "
                                  f"({str(err).splitlines()[0]}); the file was altered or written by other code") from None
    return LoadedCheckpoint(path, model.eval(), cfg)


def same_classes(checkpoints: list[LoadedCheckpoint]) -> list[str]:
    """The shared class list; refuses checkpoints trained on different lists, naming both."""
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if other.classes != first.classes:
            raise ValueError(f"{other.path} was trained on classes {other.classes} but {first.path} on "
                             f"{first.classes}; ensemble only checkpoints with the same class list")
    return first.classes
