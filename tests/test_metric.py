"""SegmentationMetric against a plain numpy confusion-matrix computation."""

import numpy as np
import pytest
import torch

from trashseg.metric import SegmentationMetric, confusion_matrix, foreground_iou


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


def test_ignored_pixels_are_left_out_and_in_range_labels_counted():
    # 3 classes; truth [[0, 2, 255], [1, 2, 255]], prediction [[0, 1, 7], [1, 2, 0]]: the two 255 pixels
    # (whatever was predicted there) are not counted; (0,0), (2,1), (1,1), (2,2) are
    confusion = confusion_matrix(torch.tensor([[0, 1, 7], [1, 2, 0]]), torch.tensor([[0, 2, 255], [1, 2, 255]]), 3)
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    only_ignored = confusion_matrix(torch.tensor([[1, 2]]), torch.tensor([[255, 255]]), 3)
    assert only_ignored.tolist() == [[0, 0, 0]] * 3


@pytest.mark.parametrize("preds, target, message", [
    # flattened as truth * 3 + prediction: prediction 3 of truth 1 is 6, silently "truth 2, prediction 0"
    ([[0, 3]], [[0, 1]], "prediction label 3 is outside 0..2 for 3 classes and is not the ignore index 255"),
    ([[0, 0]], [[3, 0]], "truth label 3 is outside 0..2"),  # was a reshape error of 10 counts
    ([[0, 0]], [[-1, 0]], "truth label -1 is outside 0..2"),  # was bincount's "non-negative" error
])
def test_labels_outside_the_classes_are_refused_in_one_line(preds, target, message):
    with pytest.raises(ValueError, match=message) as err:
        confusion_matrix(torch.tensor(preds), torch.tensor(target), 3)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message):  # and through the metric the training loop uses
        SegmentationMetric(3).update(torch.tensor([preds]), torch.tensor([target]))
