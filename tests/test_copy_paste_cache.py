"""The copy-paste crops on disk are keyed per image, by its mask's key and by the image file they are
cut from: a changed image, or the same JSON over another image root, is cut anew; every annotation
file and every class selection that holds an unchanged image reuses its crops."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from trashseg.data import CocoSegmentationDataset
from trashseg.data import copy_paste as copy_paste_module

BATTERY_ONLY = {"p": 1.0, "max_objects": 1, "scale": [1.0, 1.0], "class_weights": {"Battery": 1}}
RED, BLUE = (200, 0, 0), (0, 0, 250)


def write_data(root, battery_colour):
    """One 32x32 image of a flat colour holding a Battery square at rows 6..13, columns 4..13, and
    one Plastic image; lossless PNGs, so the crop's pixels are the colour exactly."""
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), battery_colour, np.uint8)).save(root / "a.png")
    Image.fromarray(np.full((32, 32, 3), (10, 200, 30), np.uint8)).save(root / "b.png")
    square = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32},
                       {"id": 2, "file_name": "b.png", "height": 32, "width": 32}],
            "categories": [{"id": 6, "name": "Plastic"}, {"id": 9, "name": "Battery"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 9, "segmentation": square(4, 6, 14, 14), "iscrowd": 0},
                {"id": 2, "image_id": 2, "category_id": 6, "segmentation": square(0, 0, 32, 32), "iscrowd": 0}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root


def battery_crop(root, cache):
    pool = CocoSegmentationDataset(root, "ann.json", cache_dir=cache, copy_paste=BATTERY_ONLY).copy_paste.pool
    assert len(pool) == 1
    rgb, alpha = pool.crop(0)
    assert rgb.shape == (8, 10, 3) and alpha.all()  # the whole 10 x 8 square
    return pool.parts[0], np.unique(rgb.reshape(-1, 3), axis=0).tolist()


def test_unchanged_data_reuses_the_pool(tmp_path):
    root = write_data(tmp_path / "data", RED)
    first = battery_crop(root, tmp_path / "cache")
    assert battery_crop(root, tmp_path / "cache") == first == (first[0], [list(RED)])


def test_a_changed_image_under_an_unchanged_json_builds_a_new_pool(tmp_path):
    root = write_data(tmp_path / "data", RED)
    ann = (root / "ann.json").read_bytes()
    part, colours = battery_crop(root, tmp_path / "cache")
    assert colours == [list(RED)]

    before = os.stat(root / "a.png").st_mtime_ns
    Image.fromarray(np.full((32, 32, 3), BLUE, np.uint8)).save(root / "a.png")  # an edit of the pixels
    # an edit made later: two writes inside a test can fall in the same tick of the file system's clock
    os.utime(root / "a.png", ns=(before + 10**9, before + 10**9))
    assert (root / "ann.json").read_bytes() == ann

    new_part, new_colours = battery_crop(root, tmp_path / "cache")
    assert new_colours == [list(BLUE)]  # not the stale red crop
    assert new_part != part


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_the_same_json_over_another_image_root_builds_its_own_pool(tmp_path, monkeypatch, relative):
    red = write_data(tmp_path / "red", RED)
    blue = write_data(tmp_path / "blue", BLUE)
    assert (red / "ann.json").read_bytes() == (blue / "ann.json").read_bytes()  # the same mask entries for both
    # the same file sizes and times: only the root tells the pools apart
    for name in ("a.png", "b.png"):
        stat = os.stat(red / name)
        os.utime(blue / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.chdir(tmp_path)
    roots = ("red", "blue") if relative else (red, blue)
    assert battery_crop(roots[0], tmp_path / "cache")[1] == [list(RED)]
    assert battery_crop(roots[1], tmp_path / "cache")[1] == [list(BLUE)]


def no_cutting(*args, **kwargs):
    raise AssertionError("crops were cut again")


def test_every_annotation_file_holding_the_image_reuses_its_crops(tmp_path, monkeypatch):
    """A fold's file (a subset, written with other ids, another order and formatting) and another class
    selection cut nothing: the Battery crop is the file the first pool wrote."""
    root = write_data(tmp_path / "data", RED)
    everything = CocoSegmentationDataset(root, "ann.json", cache_dir=tmp_path / "cache",
                                         copy_paste={"class_weights": "rarity"}).copy_paste.pool
    assert sorted(everything.by_label) == [6, 9]  # Plastic and Battery, from both images

    coco = json.loads((root / "ann.json").read_text())
    coco["images"] = [dict(coco["images"][0], id=40)]
    coco["annotations"] = [dict(coco["annotations"][0], id=77, image_id=40, area=80, bbox=[4, 6, 10, 8])]
    coco["categories"] = coco["categories"][::-1]
    (root / "fold.json").write_text(json.dumps(coco, indent=2))

    monkeypatch.setattr(copy_paste_module, "_cut_objects", no_cutting)
    fold = CocoSegmentationDataset(root, "fold.json", cache_dir=tmp_path / "cache", copy_paste=BATTERY_ONLY).copy_paste.pool
    battery = everything.by_label[9][0]
    assert len(fold) == 1 and fold.parts == [everything.parts[everything.meta[battery, 2]]]
    assert all(np.array_equal(a, b) for a, b in zip(fold.crop(0), everything.crop(battery)))


def test_a_fold_cuts_only_the_images_no_other_file_held(tmp_path, monkeypatch):
    root = write_data(tmp_path / "data", RED)
    coco = json.loads((root / "ann.json").read_text())
    only_a = dict(coco, images=coco["images"][:1], annotations=coco["annotations"][:1])
    (root / "a.json").write_text(json.dumps(only_a))
    CocoSegmentationDataset(root, "a.json", cache_dir=tmp_path / "cache", copy_paste=BATTERY_ONLY)

    cut = []
    original = copy_paste_module._cut_objects
    monkeypatch.setattr(copy_paste_module, "_cut_objects", lambda ds, index, labels: cut.append(index) or original(ds, index, labels))
    pool = CocoSegmentationDataset(root, "ann.json", cache_dir=tmp_path / "cache",
                                   copy_paste={"class_weights": "rarity"}).copy_paste.pool
    assert cut == [1]  # the Plastic image; the Battery image's crops came from a.json's build
    assert sorted(pool.meta[:, 0].tolist()) == [6, 9]
