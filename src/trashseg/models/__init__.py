"""The model zoo: every family behind one registry (`build_model`, `list_models`)."""

from . import alexnet_fcn, deconvnet, deeplab, fcn, smp_models, torchvision_models  # noqa: F401  (registration)
from .base import SegmentationModel
from .pretrained import OfflineError
from .registry import build_model, list_models

__all__ = ["SegmentationModel", "OfflineError", "build_model", "list_models"]
