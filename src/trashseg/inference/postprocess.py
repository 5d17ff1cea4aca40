"""Post-processing of a predicted label map (`--post` of inference.py, the OOF scorer and the
pseudo-labeller), applied to each image at its original size:

- `mode3`: a 3x3 majority (mode) filter on the labels; a pixel takes the label that most of its
  3x3 window holds only when that label wins alone; a tie keeps the centre's label. Pixels
  outside the image do not vote. (One team: 0.725 -> 0.738 mIoU on this competition.)
- `crf`: a fully connected CRF (Kraehenbuehl & Koltun 2011) on the averaged probabilities and
  the RGB image, via the optional `pydensecrf2` package (`pip install pydensecrf2`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

POST_MODES = ("none", "mode3", "crf")

# Dense CRF: pydensecrf's reference settings (its README example, used as-is by most public
# segmentation code): a smoothness kernel (position) and an appearance kernel (position + colour).
CRF_ITERATIONS = 5
CRF_GAUSSIAN = {"sxy": 3, "compat": 3}
CRF_BILATERAL = {"sxy": 80, "srgb": 13, "compat": 10}


class MissingDependencyError(ValueError):
    """An optional package a chosen option needs (a ValueError: the CLIs report it as one line)."""


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf  # the package pydensecrf2 installs
    except ImportError:
        raise MissingDependencyError("--post crf needs the optional package pydensecrf2: pip install pydensecrf2") from None
    return dcrf


def check_post(mode: str) -> None:
    """Stops before any model runs when `mode` cannot be applied."""
    if mode not in POST_MODES:
        raise ValueError(f"unknown --post {mode!r}; choose one of {', '.join(POST_MODES)}")
    if mode == "crf":
        _densecrf()


def mode_filter3(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """H x W int labels -> the 3x3 majority-filtered labels (same device)."""
    one_hot = F.one_hot(labels.long(), num_classes).permute(2, 0, 1)[None].float()
    votes = F.conv2d(one_hot, torch.ones(num_classes, 1, 3, 3, device=labels.device), padding=1, groups=num_classes)[0]
    top, winner = votes.max(0)
    alone = (votes == top).sum(0) == 1
    return torch.where(alone, winner, labels.long())


def dense_crf(probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """C x H x W probabilities and uint8 3 x H x W RGB image -> H x W labels (probs' device)."""
    dcrf = _densecrf()
    num_classes, height, width = probs.shape
    p = probs.detach().float().cpu().numpy().reshape(num_classes, -1)
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p, 1e-8, 1.0))))
    crf.addPairwiseGaussian(**CRF_GAUSSIAN)
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    crf.addPairwiseBilateral(rgbim=rgb, **CRF_BILATERAL)
    q = np.asarray(crf.inference(CRF_ITERATIONS)).reshape(num_classes, height, width)
    return torch.from_numpy(q.argmax(0)).to(probs.device)


def postprocess(mode: str, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The labels of one image (C x H x W probabilities, its 3 x H x W uint8 image)."""
    if mode == "mode3":
        return mode_filter3(probs.argmax(0), probs.shape[0])
    if mode == "crf":
        return dense_crf(probs, image)
    return probs.argmax(0)
