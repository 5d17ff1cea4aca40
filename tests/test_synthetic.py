"""The synthetic generator: layout, every loader code path, determinism."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trashseg.data import CLASSES, CocoSegmentationDataset
from trashseg.data.coco import decode, segmentation_to_rle
from trashseg.data.synthetic import BATCHES, generate_dataset


def load(root, name):
    return json.loads((root / f"{name}.json").read_text())


def test_layout_and_splits(synthetic_root):
    assert {p.name for p in synthetic_root.iterdir()} == {*BATCHES, "train.json", "val.json", "train_all.json",
                                                           "test.json", "sample_submission.csv"}
    train, val, train_all, test = (load(synthetic_root, n) for n in ("train", "val", "train_all", "test"))
    assert (len(train["images"]), len(val["images"]), len(test["images"])) == (24, 10, 6)
    assert train_all["images"] == train["images"] + val["images"]
    assert train_all["annotations"] == train["annotations"] + val["annotations"]
    assert test["annotations"] == []
    assert (synthetic_root / "sample_submission.csv").read_text() == "image_id,PredictionString\n"
    for image in train_all["images"] + test["images"]:
        assert image["file_name"].split("/")[0] in BATCHES and (synthetic_root / image["file_name"]).is_file()
    used_batches = {im["file_name"].split("/")[0] for im in train["images"]}
    assert used_batches == set(BATCHES)


def test_every_code_path_is_present(synthetic_root):
    train = load(synthetic_root, "train")
    ids = [im["id"] for im in train["images"]]
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # non-contiguous
    cats = train["categories"]
    assert [c["id"] for c in cats] != sorted(c["id"] for c in cats)  # listed out of order
    assert all(CLASSES[c["id"]] == c["name"] for c in cats)
    segs = [a["segmentation"] for a in train["annotations"]]
    assert any(isinstance(s, list) and len(s) >= 2 for s in segs)  # multi-part
    assert any(isinstance(s, list) and len(s[0]) >= 200 for s in segs)  # dense polygons (100+ vertices)
    assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in segs)  # compressed RLE
    assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in segs)  # uncompressed RLE
    assert any(a["iscrowd"] for a in train["annotations"])
    ds = CocoSegmentationDataset(synthetic_root, "train.json", cache_dir=False)
    overlapping = 0
    for i in range(len(ds)):
        masks = [m for _, m in ds.object_masks(i)]
        overlapping += (sum(m.astype(int) for m in masks) >= 2).any()
    assert overlapping >= 3


def test_labels_match_the_picture(synthetic_root):
    """Objects are drawn largest first, so area_desc masks and pixel colours agree: each class's
    pixels have a distinct mean colour (the learning signal is real)."""
    ds = CocoSegmentationDataset(synthetic_root, "train_all.json", cache_dir=False)
    sums, counts = np.zeros((11, 3)), np.zeros(11)
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"].permute(1, 2, 0).numpy().reshape(-1, 3), item["mask"].numpy().ravel()
        np.add.at(sums, mask, image)
        np.add.at(counts, mask, 1)
    assert (counts > 0).all(), "every class occurs in train + val"
    means = sums / counts[:, None]
    distances = np.linalg.norm(means[:, None] - means[None], axis=2) + np.eye(11) * 1e9
    assert distances.min() > 15


def test_deterministic_for_a_seed(tmp_path):
    a = generate_dataset(tmp_path / "a", n_train=5, n_val=2, n_test=2, size=32, seed=3)
    b = generate_dataset(tmp_path / "b", n_train=5, n_val=2, n_test=2, size=32, seed=3)
    c = generate_dataset(tmp_path / "c", n_train=5, n_val=2, n_test=2, size=32, seed=4)
    for name in ("train.json", "val.json", "test.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()
    for image in load(a, "train_all")["images"] + load(a, "test")["images"]:
        assert (a / image["file_name"]).read_bytes() == (b / image["file_name"]).read_bytes()


def test_area_and_bbox_match_the_loaders_masks(synthetic_root):
    """`area`/`bbox` describe the mask the loader rasterises, not an approximation of it."""
    coco = load(synthetic_root, "train_all")
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    for ann in coco["annotations"]:
        mask = decode(segmentation_to_rle(ann["segmentation"], *sizes[ann["image_id"]]))
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_refuses_to_overwrite_and_cli(tmp_path):
    out = tmp_path / "data"
    generate_dataset(out, n_train=2, n_val=1, n_test=1, size=32)
    with pytest.raises(FileExistsError, match="--force"):
        generate_dataset(out, n_train=2, n_val=1, n_test=1, size=32)
    cmd = [sys.executable, "-m", "trashseg.data.synthetic", "--out", str(out), "--train", "3", "--val", "1",
           "--test", "1", "--size", "32"]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert subprocess.run(cmd + ["--force"], capture_output=True, text=True).returncode == 0
    assert len(load(out, "train")["images"]) == 3
    assert not list(tmp_path.glob("*.tmp-*"))  # no half-written dataset left behind
