"""The competition's metric as a torchmetrics Metric (docs/competition.md, The metric).

One confusion matrix summed over the whole evaluated set (and across processes):
IoU_c = TP / (TP + FP + FN); mIoU = mean over classes whose union is non-zero. Also pixel
accuracy and the mean of per-image mIoU (an earlier edition's leaderboard rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from trashseg.data.classes import IGNORE_INDEX


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """C x C counts, rows = truth, columns = prediction; `ignore_index` pixels are left out. Any other
    label outside [0, C) is refused: flattened, truth C would count as the next row's class 0."""
    keep = target != ignore_index
    truth, pred = target[keep].long(), preds[keep].long()
    if truth.numel():
        low_t, high_t, low_p, high_p = torch.stack([truth.min(), truth.max(), pred.min(), pred.max()]).tolist()  # one sync
        for what, value in (("truth", low_t), ("truth", high_t), ("prediction", low_p), ("prediction", high_p)):
            if not 0 <= value < num_classes:
                raise ValueError(f"confusion_matrix: {what} label {value} is outside 0..{num_classes - 1} for "
                                 f"{num_classes} classes and is not the ignore index {ignore_index}; the masks and "
                                 "predictions must use the same class list (data.classes) and ignore index")
    index = truth * num_classes + pred
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class, NaN where the class is absent from both truth and prediction."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def foreground_iou(confusion: torch.Tensor, background: int = 0) -> torch.Tensor:
    """IoU of "any object class" against `background`, whatever class the object was given: does the
    model find the objects at all, before it has to tell their materials apart."""
    confusion = confusion.double()
    found = confusion.sum() - confusion[background].sum() - confusion[:, background].sum() + confusion[background, background]
    union = confusion.sum() - confusion[background, background]
    return found / union if union > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def summarize(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """mIoU (NaN-ignoring mean), pixel accuracy and `IoU/<class>` of one confusion matrix."""
    iou = iou_per_class(confusion)
    out = {"mIoU": torch.nanmean(iou), "pixel_acc": confusion.diag().sum().double() / confusion.sum().clamp(min=1)}
    return out | {f"IoU/{name}": value for name, value in zip(class_names, iou)}


class SegmentationMetric(Metric):
    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("image_miou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """`preds`, `target`: N x H x W labels."""
        for pred, truth in zip(preds, target):
            confusion = confusion_matrix(pred, truth, self.num_classes, self.ignore_index)
            self.confusion += confusion
            image_miou = torch.nanmean(iou_per_class(confusion))
            if not torch.isnan(image_miou):  # an image of only ignored pixels has no mIoU
                self.image_miou_sum += image_miou
                self.images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        out = summarize(self.confusion, self.class_names)
        return {"mIoU": out.pop("mIoU"), "pixel_acc": out.pop("pixel_acc"),
                "mIoU_per_image": self.image_miou_sum / self.images.clamp(min=1)} | out
