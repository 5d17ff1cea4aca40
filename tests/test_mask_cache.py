"""The mask cache is keyed per image by what its mask depends on: every annotation file holding the
image with the same annotations shares one entry, and any change to the image's annotations, the
class list, the overlap policy, the crowd mode or the image size selects another."""

import json

import numpy as np
import pytest
from PIL import Image

from trashseg.data import CLASSES, CocoSegmentationDataset
from trashseg.data import dataset as dataset_module
from trashseg.data.cache import decode_mask


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_images(root):
    """Three 32 px images: A with a Battery under a Paper (an overlap) and a crowd Plastic region,
    B with a Metal, C with nothing."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / name)
    images = [{"id": 1, "file_name": "a.png", "height": 32, "width": 32},
              {"id": 2, "file_name": "b.png", "height": 32, "width": 32},
              {"id": 3, "file_name": "c.png", "height": 32, "width": 32}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 9, "segmentation": square(2, 2, 20, 20), "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": square(10, 10, 30, 30), "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 6, "segmentation": square(0, 26, 8, 32), "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 4, "segmentation": square(4, 4, 12, 28), "iscrowd": 0}]
    categories = [{"id": i, "name": name} for i, name in enumerate(CLASSES) if i]
    return {"images": images, "annotations": annotations, "categories": categories}


def write(root, name, coco, **dump):
    (root / name).write_text(json.dumps(coco, **dump))
    return name


def mask_entries(cache):
    return sorted(p.name for p in cache.rglob("*.npy.zlib"))


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    return root, write_images(root)


def test_every_annotation_file_holding_an_image_shares_its_entry(data, tmp_path, monkeypatch):
    root, coco = data
    cache = tmp_path / "cache"
    everything = CocoSegmentationDataset(root, write(root, "train_all.json", coco), cache_dir=cache)
    masks = {str(everything.file_names[i]): everything.mask(i) for i in range(3)}
    assert len(mask_entries(cache)) == 3

    # A fold's file: images A and C only, other image, annotation and category ids, the categories
    # in another order, bbox/area added, indented: the same masks.
    ids = {1: 50, 3: 7}
    fold = {"images": [dict(im, id=ids[im["id"]]) for im in coco["images"] if im["id"] in ids][::-1],
            "annotations": [dict(a, id=100 + a["id"], image_id=ids[a["image_id"]], category_id=20 + a["category_id"],
                                 area=1.0, bbox=[0, 0, 1, 1]) for a in coco["annotations"] if a["image_id"] in ids],
            "categories": [dict(c, id=20 + c["id"]) for c in coco["categories"]][::-1]}

    def no_rasterising(*args, **kwargs):
        raise AssertionError("an entry another annotation file wrote was rasterised again")

    monkeypatch.setattr(dataset_module, "rasterize", no_rasterising)
    shared = CocoSegmentationDataset(root, write(root, "fold.json", fold, indent=2), cache_dir=cache)
    for i in range(len(shared)):
        np.testing.assert_array_equal(shared.mask(i), masks[str(shared.file_names[i])])
    assert len(mask_entries(cache)) == 3  # nothing new written


EDITS = {
    "a vertex of the image's polygon": lambda coco, kw: coco["annotations"][0]["segmentation"][0].__setitem__(0, 3),
    "the class of an annotation": lambda coco, kw: coco["annotations"][1].__setitem__("category_id", 3),
    "an annotation added to the image": lambda coco, kw: coco["annotations"].append(
        {"id": 9, "image_id": 1, "category_id": 10, "segmentation": square(0, 0, 4, 4), "iscrowd": 0}),
    "the image size": lambda coco, kw: coco["images"][0].update(height=31),
    "the overlap policy": lambda coco, kw: kw.update(overlap="class_max"),
    "the crowd mode": lambda coco, kw: kw.update(crowd="ignore"),
    "the class list (order)": lambda coco, kw: kw.update(classes=[*CLASSES[:9], CLASSES[10], CLASSES[9]]),
    "the class list (a class added)": lambda coco, kw: kw.update(classes=[*CLASSES, "Rubber"]),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_change_to_what_the_mask_depends_on_is_another_entry(data, tmp_path, edit):
    """The edited image gets another key and its mask is the one an uncached dataset rasterises (never
    the stale entry); an image the edit does not touch keeps its entry."""
    root, coco = data
    cache = tmp_path / "cache"
    before = CocoSegmentationDataset(root, write(root, "before.json", coco), cache_dir=cache)
    [before.mask(i) for i in range(3)]

    kwargs = {}
    EDITS[edit](coco, kwargs)
    name = write(root, "after.json", coco)
    after = CocoSegmentationDataset(root, name, cache_dir=cache, **kwargs)
    uncached = CocoSegmentationDataset(root, name, cache_dir=False, **kwargs)
    assert after.mask_keys[0] != before.mask_keys[0]
    for i in range(3):
        np.testing.assert_array_equal(after.mask(i), uncached.mask(i))
    if not kwargs:  # an edit of image A's annotations: B and C keep their entries
        assert list(after.mask_keys[1:]) == list(before.mask_keys[1:])
    else:  # a setting of the whole dataset: every image's mask is another entry
        assert not set(after.mask_keys) & set(before.mask_keys)


def test_the_annotation_order_of_other_images_does_not_matter_but_an_images_own_does(data, tmp_path):
    """Ties in the overlap policy keep file order, so an image's own annotation order is part of its key;
    where another image's annotations sit in the file is not."""
    root, coco = data
    first = CocoSegmentationDataset(root, write(root, "first.json", coco), cache_dir=tmp_path / "cache")
    anns = coco["annotations"]
    moved = dict(coco, annotations=[anns[3], *anns[:3]])  # B's annotation first
    moved_keys = CocoSegmentationDataset(root, write(root, "moved.json", moved), cache_dir=tmp_path / "cache").mask_keys
    assert list(moved_keys) == list(first.mask_keys)
    swapped = dict(coco, annotations=[anns[1], anns[0], *anns[2:]])  # A's own two objects swapped
    swapped_keys = CocoSegmentationDataset(root, write(root, "swapped.json", swapped), cache_dir=tmp_path / "cache").mask_keys
    assert swapped_keys[0] != first.mask_keys[0] and list(swapped_keys[1:]) == list(first.mask_keys[1:])


def test_entries_are_compressed_and_a_torn_one_is_rasterised_again(data, tmp_path):
    root, coco = data
    cache = tmp_path / "cache"
    ds = CocoSegmentationDataset(root, write(root, "ann.json", coco), cache_dir=cache)
    mask = ds.mask(0)
    entry = ds.cache.mask_path(ds.mask_keys[0])
    np.testing.assert_array_equal(decode_mask(entry.read_bytes()), mask)
    assert entry.stat().st_size < mask.nbytes / 4

    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # as a crash mid-write could leave it
    again = CocoSegmentationDataset(root, "ann.json", cache_dir=cache)
    np.testing.assert_array_equal(again.mask(0), mask)
    np.testing.assert_array_equal(decode_mask(entry.read_bytes()), mask)  # and written whole again
