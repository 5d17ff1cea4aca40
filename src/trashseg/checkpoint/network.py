"""A checkpoint's network, rebuilt without running any pickled code, and run behind its own
normalisation: the one wrapper inference and distillation teachers share."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from trashseg.data.normalize import Normalize
from trashseg.memory_format import channels_last_input, to_channels_last, wants_channels_last
from trashseg.precision import autocast_dtype

from .file import CheckpointFileError, first_line, read_checkpoint, run_config


def load_network(path: str | Path) -> tuple[nn.Module, dict]:
    """(the checkpoint's network rebuilt from its own run config with the file's weights, in eval
    mode; that config). One line for a missing, damaged or foreign file, or weights that do not fit."""
    from trashseg.models import build_model  # models import nothing of ours: no cycle

    ckpt = read_checkpoint(path)
    cfg = run_config(ckpt, path)
    model = build_model({**cfg["model"], "pretrained": None}, len(cfg["data"]["classes"]))  # weights: the file's
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointFileError(f"{path}: its weights do not fit the model its config describes "
                                  f"({first_line(err)}); the file was altered or written by other code") from None
    return model.eval(), cfg


class NormalisedNet(nn.Module):
    """A checkpoint's network behind its normalisation (its run config's data.mean / std): pixels
    (uint8, or float in 0..255 after a rescale) N x 3 x H x W -> float32 logits N x C x H x W.

    `own_precision`: computed in the precision the run trained in (`autocast_dtype` of its
    trainer.precision), as inference runs it; False: in the caller's (a distillation teacher runs
    inside the student's training step, under the student's autocast). `channels_last`: None, as
    the run trained on `device`; a bool forces it."""

    def __init__(self, model: nn.Module, cfg: dict, device: torch.device | str = "cpu", own_precision: bool = True,
                 channels_last: bool | None = None):
        super().__init__()
        device = torch.device(device)
        self.normalize = Normalize(cfg["data"]["mean"], cfg["data"]["std"])
        self.model = model.eval()
        self.to(device)
        self.own_precision = own_precision
        self.compute_dtype = autocast_dtype(cfg.get("trainer", {}).get("precision", "32-true"), device)
        self.channels_last = (wants_channels_last(cfg.get("channels_last"), device) if channels_last is None
                              else channels_last)
        if self.channels_last:
            to_channels_last(self.model)

    def _precision(self, device_type: str):
        if not self.own_precision:
            return nullcontext()
        return torch.autocast(device_type, dtype=self.compute_dtype, enabled=self.compute_dtype is not None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._precision(pixels.device.type):
            x = self.normalize(pixels)
            return self.model(channels_last_input(x) if self.channels_last else x).float()
