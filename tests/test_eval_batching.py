"""Evaluation batches hold images of one size, in file order: a prediction must not depend on the
other images in its batch (their padding would enter the model), and a submission's rows follow
the annotation file."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from trashseg.data import datamodule as datamodule_module
from trashseg.data.datamodule import TrashDataModule
from trashseg.data.samplers import SameSizeBatchSampler
from trashseg.inference.loop import build_loader
from trashseg.models import build_model

CLASSES = ["Background", "General trash", "Paper", "Paper pack", "Metal", "Glass", "Plastic", "Styrofoam",
           "Plastic bag", "Battery", "Clothing"]
# (height, width) per image in file order: TrashCan's 270- and 360-high frames at a tenth of the size
SIZES = [(36, 48), (27, 48), (27, 48), (36, 48), (36, 48), (36, 48), (36, 48)]


@pytest.fixture
def mixed_sizes(tmp_path) -> Path:
    """A labelled val.json and an unlabelled test.json over noise images of two frame sizes;
    ids neither contiguous nor sorted, so file order is not id order."""
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate(SIZES):
        name = f"frame_{i}.png"  # PNG: lossless, the pixels are exactly these
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        images.append({"id": 100 - 7 * i, "file_name": name, "height": h, "width": w})
    categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES) if i]
    annotations = [{"id": i, "image_id": im["id"], "category_id": 1, "iscrowd": 0, "area": 16.0, "bbox": [0, 0, 4, 4],
                    "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]} for i, im in enumerate(images)]
    (tmp_path / "val.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    (tmp_path / "test.json").write_text(json.dumps({"images": images, "categories": categories}))
    return tmp_path


def run_config(root: Path) -> dict:
    return {"data": {"root": str(root), "val_ann": "val.json", "test_ann": "test.json", "overlap": "area_desc",
                     "crowd": "label", "cache_dir": False, "images_relative_to": "root"}}


def test_batches_hold_one_size_and_follow_file_order(mixed_sizes):
    loader = build_loader(run_config(mixed_sizes), "test", CLASSES, batch_size=2, num_workers=0)
    batches = list(loader)
    # cut at every size change and every 2 images: [0] [1 2] [3 4] [5 6]
    assert [b["file_name"] for b in batches] == [["frame_0.png"], ["frame_1.png", "frame_2.png"],
                                                 ["frame_3.png", "frame_4.png"], ["frame_5.png", "frame_6.png"]]
    assert [i for b in batches for i in b["id"].tolist()] == [100 - 7 * i for i in range(7)]  # test.json order
    assert all(len({tuple(s) for s in b["orig_size"].tolist()}) == 1 for b in batches)
    assert len(loader) == 4
    # --limit keeps the file's first images, batched the same way
    limited = build_loader(run_config(mixed_sizes), "test", CLASSES, batch_size=4, num_workers=0, limit=4)
    assert [b["file_name"] for b in limited] == [["frame_0.png"], ["frame_1.png", "frame_2.png"], ["frame_3.png"]]


def test_an_image_logits_are_the_same_alone_and_among_other_sizes(mixed_sizes):
    torch.manual_seed(0)
    model_cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "unet_tiny.yaml").read_text())
    model = build_model(model_cfg, len(CLASSES)).eval()
    loader = build_loader(run_config(mixed_sizes), "val", CLASSES, batch_size=4, num_workers=0)
    dataset = loader.dataset
    with torch.inference_mode():
        batched = {}
        for batch in loader:
            logits = model(batch["image"].float() / 255)
            for logit, i, (h, w) in zip(logits, batch["id"].tolist(), batch["orig_size"].tolist()):
                batched[i] = logit[:, :h, :w]
        assert len(batched) == len(SIZES)
        for index in range(len(dataset)):
            item = dataset[index]
            alone = model(item["image"][None].float() / 255)[0]
            # the 27-high frames are the ones a 36-high batch mate would pad (and shift their bottom edge)
            torch.testing.assert_close(batched[item["id"]], alone, rtol=1e-5, atol=1e-5)


def test_ddp_eval_shards_are_batched_by_size(mixed_sizes, monkeypatch):
    module = TrashDataModule(mixed_sizes, classes=CLASSES, train_ann="val.json", val_ann="val.json", cache_dir=False,
                             num_workers=0, batch_size=3)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(datamodule_module, "_world", lambda rank=rank: (2, rank))
        for batch in module.val_dataloader():
            assert len({tuple(s) for s in batch["orig_size"].tolist()}) == 1
            assert batch["image"].shape[-2:] == tuple(batch["orig_size"][0].tolist())  # nothing padded
            seen += batch["id"].tolist()
    assert sorted(seen) == sorted(100 - 7 * i for i in range(7))  # every image once across the ranks
    monkeypatch.setattr(datamodule_module, "_world", lambda: (1, 0))
    one = [b["file_name"] for b in module.val_dataloader()]
    assert one == [["frame_0.png"], ["frame_1.png", "frame_2.png"], ["frame_3.png", "frame_4.png", "frame_5.png"],
                   ["frame_6.png"]]


def test_the_batch_sampler_cuts_on_size_change_by_hand():
    sizes = np.array([[2, 3], [2, 3], [4, 3], [2, 3], [2, 3], [2, 3]])
    assert list(SameSizeBatchSampler(range(6), 2, sizes)) == [[0, 1], [2], [3, 4], [5]]
    assert list(SameSizeBatchSampler([5, 4, 2, 0], 3, sizes)) == [[5, 4], [2], [0]]  # the given order, kept
    with pytest.raises(ValueError, match="drop_last must be False"):
        SameSizeBatchSampler(range(6), 2, sizes, drop_last=True)
