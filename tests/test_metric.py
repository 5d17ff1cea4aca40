"""SegmentationMetric against a plain numpy confusion-matrix computation."""

import numpy as np
import pytest
import torch

from trashseg.metric import SegmentationMetric, foreground_iou


def numpy_reference(preds, target, n, ignore=255):
    """The baseline's label_accuracy_score rule: one histogram over the whole set, nanmean."""
    keep = target != ignore
    hist = np.bincount(n * target[keep].astype(int) + preds[keep], minlength=n * n).reshape(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    per_image = []
    for p, t in zip(preds, target):
        k = t != ignore
        h = np.bincount(n * t[k].astype(int) + p[k], minlength=n * n).reshape(n, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_image.append(np.nanmean(np.diag(h) / (h.sum(1) + h.sum(0) - np.diag(h))))
    return np.nanmean(iou), iou, np.diag(hist).sum() / hist.sum(), np.mean(per_image)


def test_matches_numpy_with_absent_classes_and_ignored_pixels():
    rng = np.random.default_rng(0)
    n = 11
    # classes 9 and 10 never occur, neither in truth nor in predictions
    target = rng.integers(0, 9, (6, 16, 20))
    preds = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 9, target.shape))
    target[:, :2] = 255
    metric = SegmentationMetric(n, class_names=[f"c{i}" for i in range(n)])
    metric.update(torch.from_numpy(preds[:4]), torch.from_numpy(target[:4]).to(torch.uint8))
    metric.update(torch.from_numpy(preds[4:]), torch.from_numpy(target[4:]).to(torch.uint8))
    out = metric.compute()
    miou, iou, acc, per_image = numpy_reference(preds, target, n)
    assert out["mIoU"].item() == pytest.approx(miou, abs=1e-12)
    assert out["pixel_acc"].item() == pytest.approx(acc, abs=1e-12)
    assert out["mIoU_per_image"].item() == pytest.approx(per_image, abs=1e-12)
    for c in range(n):
        if np.isnan(iou[c]):
            assert torch.isnan(out[f"IoU/c{c}"])
        else:
            assert out[f"IoU/c{c}"].item() == pytest.approx(iou[c], abs=1e-12)
    assert np.isnan(iou[9]) and np.isnan(iou[10])


def test_hand_computed_confusion():
    # truth [[0, 1], [1, 2]], prediction [[0, 1], [2, 2]]: IoU 0 = 1, IoU 1 = 1/2, IoU 2 = 1/2
    metric = SegmentationMetric(4)
    metric.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [1, 2]]]))
    out = metric.compute()
    assert metric.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert out["mIoU"].item() == pytest.approx((1 + 0.5 + 0.5) / 3)  # class 3 absent: not averaged
    assert out["pixel_acc"].item() == pytest.approx(0.75)


def test_foreground_iou_merges_the_object_classes():
    # rows truth, columns prediction: Background, A, B
    confusion = torch.tensor([[90, 4, 1],   # 5 Background pixels called an object
                              [2, 3, 5],    # A: 8 found (3 as A, 5 as B), 2 missed
                              [1, 0, 4]])   # B: 4 found, 1 missed
    # found objects 3 + 5 + 0 + 4 = 12; union = all 110 pixels but the 90 Background-as-Background = 20
    assert foreground_iou(confusion).item() == pytest.approx(12 / 20)
    assert torch.isnan(foreground_iou(torch.tensor([[7, 0], [0, 0]])))  # no object anywhere
