"""The data layer: COCO annotations -> masks (explicit overlap policy, cached) -> loaders."""

from .classes import CLASSES, IGNORE_INDEX, PALETTE
from .coco import UnknownCategoryError
from .datamodule import TrashDataModule
from .dataset import CocoSegmentationDataset
from .normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize

__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "UnknownCategoryError",
    "TrashDataModule",
    "CocoSegmentationDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
]
