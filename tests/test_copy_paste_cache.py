"""The copy-paste pool on disk is keyed by the image files its crops are cut from, not only by the
annotation file: a changed image, or the same JSON over another image root, builds a new pool."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from trashseg.data import CocoSegmentationDataset

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
    return pool.folder, np.unique(rgb.reshape(-1, 3), axis=0).tolist()


def test_unchanged_data_reuses_the_pool(tmp_path):
    root = write_data(tmp_path / "data", RED)
    first = battery_crop(root, tmp_path / "cache")
    assert battery_crop(root, tmp_path / "cache") == first == (first[0], [list(RED)])


def test_a_changed_image_under_an_unchanged_json_builds_a_new_pool(tmp_path):
    root = write_data(tmp_path / "data", RED)
    ann = (root / "ann.json").read_bytes()
    folder, colours = battery_crop(root, tmp_path / "cache")
    assert colours == [list(RED)]

    before = os.stat(root / "a.png").st_mtime_ns
    Image.fromarray(np.full((32, 32, 3), BLUE, np.uint8)).save(root / "a.png")  # an edit of the pixels
    # an edit made later: two writes inside a test can fall in the same tick of the file system's clock
    os.utime(root / "a.png", ns=(before + 10**9, before + 10**9))
    assert (root / "ann.json").read_bytes() == ann

    new_folder, new_colours = battery_crop(root, tmp_path / "cache")
    assert new_colours == [list(BLUE)]  # not the stale red crop
    assert new_folder != folder


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_the_same_json_over_another_image_root_builds_its_own_pool(tmp_path, monkeypatch, relative):
    red = write_data(tmp_path / "red", RED)
    blue = write_data(tmp_path / "blue", BLUE)
    assert (red / "ann.json").read_bytes() == (blue / "ann.json").read_bytes()  # one mask cache folder for both
    # the same file sizes and times: only the root tells the pools apart
    for name in ("a.png", "b.png"):
        stat = os.stat(red / name)
        os.utime(blue / name, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.chdir(tmp_path)
    roots = ("red", "blue") if relative else (red, blue)
    assert battery_crop(roots[0], tmp_path / "cache")[1] == [list(RED)]
    assert battery_crop(roots[1], tmp_path / "cache")[1] == [list(BLUE)]
