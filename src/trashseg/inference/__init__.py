"""Checkpoints -> predictions: TTA, multi-scale, ensembles, CSVs and validation mIoU."""

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .predictor import Predictor

__all__ = ["LoadedCheckpoint", "load_checkpoint", "Predictor"]
