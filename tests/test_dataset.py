"""CocoSegmentationDataset: the real sample against the baseline rule, errors, the mask cache."""

import json
import shutil

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from trashseg.data import CLASSES, CocoSegmentationDataset, UnknownCategoryError
from trashseg.data import dataset as dataset_module


def baseline_masks(root, ann_file):
    """The official baseline's overlap rule (docs/competition.md, Overlapping objects), written
    independently with pycocotools' COCO: annotations sorted by len(segmentation[0]) ascending, later
    ones overwrite earlier ones."""
    coco = COCO(str(root / ann_file))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    out = {}
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: len(a["segmentation"][0]))
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        coverage = np.zeros_like(mask, dtype=np.int32)
        for ann in anns:
            m = coco.annToMask(ann)
            mask[m == 1] = CLASSES.index(names[ann["category_id"]])
            coverage += m
        out[image_id] = mask, coverage
    return out


@pytest.mark.shared_data
@pytest.mark.parametrize("ann_file", ["train.json", "val.json"])
def test_recycle_sample_baseline_and_area_desc(recycle_sample, ann_file, tmp_path):
    expected = baseline_masks(recycle_sample, ann_file)
    base = CocoSegmentationDataset(recycle_sample, ann_file, overlap="baseline", cache_dir=tmp_path)
    area = CocoSegmentationDataset(recycle_sample, ann_file, overlap="area_desc", cache_dir=tmp_path)
    differing_images = 0
    for i, image_id in enumerate(base.ids):
        mask, coverage = expected[int(image_id)]
        np.testing.assert_array_equal(base.mask(i), mask, err_msg=f"image id {image_id}")
        differs = area.mask(i) != mask
        assert not (differs & (coverage < 2)).any(), f"image id {image_id}: area_desc differs off overlaps"
        differing_images += bool(differs.any())
    if ann_file == "train.json":  # 10 of its 50 images have overlapping objects
        assert differing_images > 0


def write_coco(root, images, annotations, categories=None):
    """A tiny COCO dataset: `images` maps file name -> (id, uint8 RGB array)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (image_id, pixels) in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        entries.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
    cats = categories or [{"id": i, "name": n} for i, n in enumerate(CLASSES) if i]
    (root / "ann.json").write_text(json.dumps({"images": entries, "annotations": annotations, "categories": cats}))
    return root


def sq(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def tiny(tmp_path):
    """Three 32 px images with non-contiguous ids 7, 3, 100; categories listed in a shuffled order."""
    rng = np.random.default_rng(0)
    images = {f"batch_01_vt/{k}.jpg": (i, rng.integers(0, 255, (32, 32, 3), np.uint8)) for k, i in enumerate([7, 3, 100])}
    anns = [
        {"id": 1, "image_id": 7, "category_id": 9, "segmentation": sq(0, 0, 10, 10), "iscrowd": 0},
        {"id": 2, "image_id": 100, "category_id": 2, "segmentation": sq(5, 5, 20, 30), "iscrowd": 0},
    ]
    cats = [{"id": i, "name": CLASSES[i]} for i in (10, 2, 9, 1, 3, 4, 5, 6, 7, 8)]
    return write_coco(tmp_path / "data", images, anns, cats)


def test_items_non_contiguous_ids_and_labels_by_name(tiny, tmp_path):
    ds = CocoSegmentationDataset(tiny, "ann.json", cache_dir=tmp_path / "cache")
    assert [ds[i]["id"] for i in range(len(ds))] == [7, 3, 100]
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype.is_floating_point is False
    assert item["file_name"] == "batch_01_vt/0.jpg" and item["orig_size"].tolist() == [32, 32]
    expected = np.zeros((32, 32), np.uint8)
    expected[0:10, 0:10] = CLASSES.index("Battery")
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert not ds[1]["mask"].any()  # an image without annotations is all Background
    assert (ds[2]["mask"].numpy() == CLASSES.index("Paper")).sum() == 15 * 25


def test_unknown_category_names_it(tiny):
    classes = [c for c in CLASSES if c != "Battery"]
    with pytest.raises(UnknownCategoryError, match="'Battery'") as err:
        CocoSegmentationDataset(tiny, "ann.json", classes=classes)
    assert "\n" not in str(err.value)


def test_missing_and_truncated_images_name_the_path(tiny):
    (tiny / "batch_01_vt/1.jpg").unlink()
    data = (tiny / "batch_01_vt/2.jpg").read_bytes()
    (tiny / "batch_01_vt/2.jpg").write_bytes(data[: len(data) // 2])
    ds = CocoSegmentationDataset(tiny, "ann.json", mode="test")
    with pytest.raises(FileNotFoundError, match=r"batch_01_vt/1\.jpg") as err:
        ds[1]
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"truncated JPEG: .*batch_01_vt/2\.jpg") as err:
        ds[2]
    assert "\n" not in str(err.value)


def test_size_mismatch_names_the_file(tiny):
    ann = json.loads((tiny / "ann.json").read_text())
    ann["images"][0]["width"] = 40
    (tiny / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match=r"0\.jpg is 32x32 but ann\.json says 40x32"):
        CocoSegmentationDataset(tiny, "ann.json", mode="test")[0]


def test_test_json_without_annotations_loads_in_test_mode(tiny):
    ann = json.loads((tiny / "ann.json").read_text())
    del ann["annotations"]
    (tiny / "test.json").write_text(json.dumps(ann))
    ds = CocoSegmentationDataset(tiny, "test.json", mode="test")
    item = ds[2]
    assert "mask" not in item and item["id"] == 100 and item["image"].shape == (3, 32, 32)


def test_cache_second_pass_reads_no_geometry_and_edit_invalidates(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = [CocoSegmentationDataset(tiny, "ann.json", cache_dir=cache)[i]["mask"] for i in range(3)]

    def no_geometry(*args, **kwargs):
        raise AssertionError("rasterised although the cache is warm")

    monkeypatch.setattr(dataset_module, "rasterize", no_geometry)
    warm = CocoSegmentationDataset(tiny, "ann.json", cache_dir=cache)
    assert all(warm._objects[i] is None for i in range(3))  # geometry not even kept
    for i in range(3):
        assert (warm[i]["mask"] == first[i]).all()
    monkeypatch.undo()

    ann = json.loads((tiny / "ann.json").read_text())
    ann["annotations"][0]["category_id"] = 1  # Battery -> General trash
    (tiny / "ann.json").write_text(json.dumps(ann))
    edited = CocoSegmentationDataset(tiny, "ann.json", cache_dir=cache)
    assert edited[0]["mask"].max() == 1
    # only the edited image's entry changed (every dependency of the key: tests/test_mask_cache.py)
    assert edited.mask_keys[0] != warm.mask_keys[0] and list(edited.mask_keys[1:]) == list(warm.mask_keys[1:])


def test_transforms_from_config_keep_masks_nearest(tiny, tmp_path):
    steps = [{"name": "Resize", "params": {"height": 48, "width": 40}}, {"name": "HorizontalFlip", "params": {"p": 1.0}}]
    ds = CocoSegmentationDataset(tiny, "ann.json", transforms=steps, cache_dir=tmp_path / "c")
    item = ds[0]
    assert item["image"].shape == (3, 48, 40) and item["mask"].shape == (48, 40)
    assert set(np.unique(item["mask"].numpy())) <= {0, CLASSES.index("Battery")}  # no blended labels
    with pytest.raises(ValueError, match="HorizontalFlip"):
        CocoSegmentationDataset(tiny, "ann.json", transforms=[{"name": "HorizontalFlipp"}])


def test_cache_is_shared_by_workers(tiny, tmp_path):
    from torch.utils.data import DataLoader

    ds = CocoSegmentationDataset(tiny, "ann.json", cache_dir=tmp_path / "cache")
    batches = list(DataLoader(ds, batch_size=1, num_workers=2))
    assert len(batches) == 3
    assert sorted(p.name for p in ds.cache.folder.rglob("*.npy.zlib")) == sorted(f"{key}.npy.zlib" for key in ds.mask_keys)
    assert len(set(ds.mask_keys)) == 3
