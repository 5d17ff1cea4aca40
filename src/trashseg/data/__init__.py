"""The data layer: COCO annotations -> masks (explicit overlap policy, cached) -> loaders."""

from .classes import CLASSES, IGNORE_INDEX, PALETTE
from .coco import UnknownCategoryError
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


def __getattr__(name: str):
    # Lightning takes seconds to import; the command-line tools of this package don't need it.
    if name == "TrashDataModule":
        from .datamodule import TrashDataModule

        return TrashDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
