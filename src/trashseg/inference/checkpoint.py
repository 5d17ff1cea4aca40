"""Rebuild a model from a training checkpoint without running any pickled code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trashseg.checkpoint_file import load_network
from trashseg.data.normalize import Normalize
from trashseg.memory_format import channels_last_input, to_channels_last, wants_channels_last


def autocast_dtype(precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that predicts as a run of `precision` (its trainer.precision) trained, on
    `device`; None: float32. float16 only on CUDA: CPUs have no fast float16 kernels (Lightning
    itself trains a CPU run of 16-mixed in bf16-mixed), and float32 holds every float16 value."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision in ("16-mixed", "16-true", "16", "half") and device.type == "cuda":
        return torch.float16
    return None


class TorchNet(nn.Module):
    """A checkpoint's network behind its normalisation: pixels (uint8, or float in 0..255 after
    a rescale) N x 3 x H x W -> float32 logits N x C x H x W, on one device, computed in the
    precision the run trained in (`autocast_dtype` of its trainer.precision)."""

    def __init__(self, model: nn.Module, cfg: dict, device: torch.device):
        super().__init__()
        self.normalize = Normalize(cfg["data"]["mean"], cfg["data"]["std"])
        self.model = model.eval()
        self.to(device)
        self.compute_dtype = autocast_dtype(cfg.get("trainer", {}).get("precision", "32-true"), device)
        self.channels_last = wants_channels_last(cfg.get("channels_last"), device)  # as the run trained
        if self.channels_last:
            to_channels_last(self.model)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pixels.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype is not None):
            x = self.normalize(pixels)
            return self.model(channels_last_input(x) if self.channels_last else x).float()


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

    def net(self, device: str | torch.device = "cpu") -> TorchNet:
        return TorchNet(self.model, self.cfg, torch.device(device))


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
