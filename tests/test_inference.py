"""inference.py against the training engine, and the predictor's TTA / ensemble rules."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.nn import functional as F

from trashseg.inference import LoadedCheckpoint, Predictor, load_checkpoint
from trashseg.inference.command import main as inference
from trashseg.inference.ensemble import main as ensemble
from trashseg.submission import read_submission, to_submission_size
from trashseg.submission.check import check_submission
from trashseg.training import run as run_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A checkpoint of one short quickstart epoch and the val mIoU the training engine logged."""
    run_dir = tmp_path_factory.mktemp("run") / "quickstart"
    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                 "data.val_batch_size=3", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=csv",
                 "model.decoder.decoder_channels=[32,16,16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        run_module.train(compose(config_name="train", overrides=overrides), run_dir)
    logged = pd.read_csv(run_dir / "metrics.csv")["val/mIoU"].dropna().max()
    return run_dir / "checkpoints" / "best.ckpt", float(logged)


def test_val_miou_equals_the_training_engine(trained, tmp_path, capsys):
    ckpt, logged = trained
    out = tmp_path / "val.json"
    # batch 3 over 10 val images: the last batch holds one image
    assert inference(["--checkpoint", str(ckpt), "--split", "val", "--batch-size", "3", "--num-workers", "0",
                      "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["full resolution"]["mIoU"] == pytest.approx(logged, abs=1e-6)
    assert "IoU/Clothing" in results["256x256"] and "per-class IoU" in capsys.readouterr().out
    # the confusion behind the figures travels in the file: its IoUs are the reported ones
    confusion = np.array(results["full resolution"]["confusion"], dtype=float)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    assert np.nanmean(iou) == pytest.approx(results["full resolution"]["mIoU"], abs=1e-9)


def test_test_csv_matches_the_predictions(trained, synthetic_root, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "sub.csv"
    assert inference(["--checkpoint", str(ckpt), "--split", "test", "--batch-size", "4", "--num-workers", "0",
                      "--out", str(out), "--save-probs", str(tmp_path / "probs")]) == 0
    assert check_submission(out, synthetic_root / "test.json") == []
    predictor = Predictor([load_checkpoint(ckpt)])
    from trashseg.data import CocoSegmentationDataset

    ds = CocoSegmentationDataset(synthetic_root, "test.json", mode="test")
    rows = list(read_submission(out))
    for i, (image_id, labels) in enumerate(rows):
        item = ds[i]
        assert image_id == item["file_name"]
        expected = predictor.predict(item["image"][None])[0].numpy().astype(np.uint8)
        np.testing.assert_array_equal(labels, to_submission_size(expected))
    # the saved probabilities give the same submission without running the model again
    again = tmp_path / "again.csv"
    assert ensemble(["--probs", str(tmp_path / "probs"), "--out", str(again)]) == 0
    same = [np.mean(a[1] == b[1]) for a, b in zip(rows, read_submission(again))]
    assert min(same) > 0.99  # float16 storage flips near-ties (many in a one-epoch model)


def test_ensemble_of_two_copies_equals_one(trained, tmp_path):
    ckpt, _ = trained
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    common = ["--split", "test", "--num-workers", "0"]
    assert inference(["--checkpoint", str(ckpt), *common, "--out", str(one)]) == 0
    assert inference(["--checkpoint", str(ckpt), "--checkpoint", str(ckpt), "--weights", "1", "1", *common, "--out", str(two)]) == 0
    assert one.read_bytes() == two.read_bytes()


def test_a_weighted_folder_ensemble_hands_on_probabilities_as_the_predictor_does(tmp_path, monkeypatch):
    """--weights 3 1 over two probabilities folders: what post-processing sees (crf takes its log) is
    (3 a + b) / 4, a probability per pixel, as the predictor's normalised weights give; was 3 a + b."""
    from trashseg.inference import ensemble as ensemble_module
    from trashseg.inference.probs_store import ProbsWriter

    rng = np.random.default_rng(0)
    probs = []
    for name in ("a", "b"):
        p = rng.random((3, 8, 8)).astype(np.float32)
        p /= p.sum(0)
        probs.append(p)
        with ProbsWriter(tmp_path / name, ["x", "y", "z"], [name], dtype=np.float32) as writer:
            writer.write(1, "img.jpg", p)
    seen = []

    def post(mode, total, rgb):
        seen.append(total.numpy())
        return total.argmax(0)

    monkeypatch.setattr(ensemble_module, "postprocess", post)
    ensemble_module.ensemble([tmp_path / "a", tmp_path / "b"], [3, 1], tmp_path / "out.csv", size=8)
    (total,) = seen
    np.testing.assert_allclose(total, (3 * probs[0] + probs[1]) / 4, rtol=1e-6)
    np.testing.assert_allclose(total.sum(0), 1, rtol=1e-5)


def test_other_class_list_is_refused(trained, tmp_path, capsys):
    ckpt, _ = trained
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["cfg"]["data"]["classes"][2] = "Cardboard"
    other = tmp_path / "other.ckpt"
    torch.save(data, other)
    assert inference(["--checkpoint", str(ckpt), "--checkpoint", str(other), "--num-workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "'Cardboard'" in err and "'Paper'" in err and err.count("\n") == 1
    assert not list(Path("submissions").glob("*other*"))


class Pointwise(nn.Module):
    """A 1x1 convolution: equivariant to flips and rotations."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.conv(x)


def pointwise_checkpoint():
    cfg = {"data": {"classes": [str(i) for i in range(5)], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    return LoadedCheckpoint(Path("pointwise"), Pointwise(), cfg)


@pytest.mark.parametrize("tta", ["hflip", "vflip", "hvflip", "d4"])
def test_tta_of_an_equivariant_model_equals_no_tta(tta):
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    plain = Predictor([pointwise_checkpoint()]).probs(images)
    assert torch.allclose(Predictor([pointwise_checkpoint()], tta=tta).probs(images), plain, atol=1e-6)


def test_bad_weights_and_tta_fail_clearly():
    with pytest.raises(ValueError, match="2 --weights for 1 checkpoints"):
        Predictor([pointwise_checkpoint()], weights=[1, 2])
    with pytest.raises(ValueError, match="unknown --tta 'flip'"):
        Predictor([pointwise_checkpoint()], tta="flip")


class ScaleSensitive(nn.Module):
    """A 3x3 convolution: its output depends on the scale it sees an image at."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_resize_predicts_each_image_at_the_training_size_and_returns_its_own_size():
    cfg = pointwise_checkpoint().cfg
    source = LoadedCheckpoint(Path("conv"), ScaleSensitive(), cfg)
    torch.manual_seed(1)
    wide, tall = torch.randint(0, 255, (3, 18, 32), dtype=torch.uint8), torch.randint(0, 255, (3, 24, 20), dtype=torch.uint8)
    batch = torch.zeros(2, 3, 24, 32, dtype=torch.uint8)  # padded as pad_collate pads
    batch[0, :, :18, :32], batch[1, :, :24, :20] = wide, tall
    out = Predictor([source], resize=(12, 16)).probs_per_image(batch, [(18, 32), (24, 20)])
    assert [tuple(p.shape) for p in out] == [(5, 18, 32), (5, 24, 20)]
    for image, probs in zip([wide, tall], out):  # by hand: resize without the padding, predict, resize back
        small = F.interpolate(image[None].float(), size=(12, 16), mode="bilinear", align_corners=False)
        expected = Predictor([source]).probs(small)
        expected = F.interpolate(expected, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
        assert torch.allclose(probs, expected, atol=1e-6)
    # without --resize, the padded batch is predicted as is and cropped
    plain = Predictor([source]).probs_per_image(batch, [(18, 32), (24, 20)])
    assert torch.allclose(plain[1], Predictor([source]).probs(batch)[1, :, :24, :20])
    with pytest.raises(ValueError, match="--resize 0 16: give a height and a width"):
        Predictor([source], resize=(0, 16))
