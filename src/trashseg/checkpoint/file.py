"""Opening a checkpoint file (checkpoint.lightning_io writes them): tensors and plain containers
only (`weights_only`, so a file from elsewhere can never run code), and one line naming the file,
the cause and the fix for a file that is truncated, not a checkpoint, or holds pickled objects."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from trashseg.run_layout import BEST, LAST

FIX = f"copy it again, or use another checkpoint (a run folder has {LAST} and {BEST})"


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be loaded safely."""


def first_line(err: BaseException) -> str:
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
            f"{path} holds pickled Python objects that a weights-only load refuses ({first_line(err)}); load only "
            "checkpoints written by trashseg, or re-save the tensors of one you trust with torch.save(state_dict)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError) as err:
        raise CheckpointFileError(f"{path} is damaged ({first_line(err)}); {FIX}") from None
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
