"""Opening a checkpoint file: tensors and plain containers only (`weights_only`, so a file from
elsewhere can never run code), and one line naming the file, the cause and the fix for a file
that is truncated, not a checkpoint, or holds pickled objects."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

FIX = "copy it again, or use another checkpoint (a run folder has checkpoints/last.ckpt and best.ckpt)"


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be loaded safely."""


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(err).__name__)
    return detail.rstrip(".")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint's dict (tensors memory-mapped with `mmap`, for reading a few small fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # torch.save writes a zip archive whose directory is at the end: a truncated file has none.
    if not zipfile.is_zipfile(path):
        raise CheckpointFileError(f"{path} is truncated or not a PyTorch checkpoint (no zip directory at its end); {FIX}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{path} holds pickled Python objects that a weights-only load refuses ({_first_line(err)}); load only "
            "checkpoints written by trashseg, or re-save the tensors of one you trust with torch.save(state_dict)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError) as err:
        raise CheckpointFileError(f"{path} is damaged ({_first_line(err)}); {FIX}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointFileError(f"{path} is not a Lightning training checkpoint (no state_dict); {FIX}")
    return ckpt


def run_config(ckpt: dict, path: str | Path) -> dict:
    """The resolved run config a trashseg checkpoint carries (hyper_parameters.cfg)."""
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg")
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise CheckpointFileError(f"{path} is not a trashseg training checkpoint (no hyper_parameters.cfg with model "
                                  "and data); use a checkpoint that train.py wrote")
    return cfg


def load_network(path: str | Path) -> tuple[torch.nn.Module, dict]:
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
                                  f"({_first_line(err)}); the file was altered or written by other code") from None
    return model.eval(), cfg
