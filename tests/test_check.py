"""The dataset checker finds each kind of broken dataset, and passes a clean one."""

import json
import shutil
import subprocess
import sys

import pytest

from trashseg.data.check import check_dataset, main


@pytest.fixture
def copy(synthetic_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def edit_json(root, fn, name="train.json"):
    coco = json.loads((root / name).read_text())
    fn(coco)
    (root / name).write_text(json.dumps(coco))
    return coco


def test_clean_dataset_passes(synthetic_root, capsys):
    assert main(["--root", str(synthetic_root), "--ann", "train.json"]) == 0
    out = capsys.readouterr().out
    assert "24 images" in out and out.strip().endswith("OK: 0 errors, 0 warnings")
    assert main(["--root", str(synthetic_root), "--ann", "test.json"]) == 0  # no annotations: no warnings


def first_file(coco):
    return coco["images"][0]["file_name"]


def delete_image(root, coco):
    (root / first_file(coco)).unlink()
    return "image not found"


def truncate_image(root, coco):
    path = root / first_file(coco)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated JPEG"


def wrong_width(root, coco):
    edit_json(root, lambda c: c["images"][0].update(width=99))
    return "the JSON says 99x64, the file is 64x64"


def unknown_category(root, coco):
    edit_json(root, lambda c: c["categories"][0].update(name="Cardboard"))
    return "'Cardboard'"


def duplicate_id(root, coco):
    edit_json(root, lambda c: c["images"][1].update(id=c["images"][0]["id"]))
    return "duplicate image id"


def duplicate_annotation_id(root, coco):
    edit_json(root, lambda c: c["annotations"][1].update(id=c["annotations"][0]["id"]))
    return "duplicate annotation id"


def duplicate_file_name(root, coco):
    edit_json(root, lambda c: c["images"][1].update(file_name=c["images"][0]["file_name"]))
    return "duplicate file name"


def annotation_on_unknown_image(root, coco):
    edit_json(root, lambda c: c["annotations"][0].update(image_id=10**6))
    return "no image with this id"


@pytest.mark.parametrize("breakage", [delete_image, truncate_image, wrong_width, unknown_category, duplicate_id,
                                      duplicate_annotation_id, duplicate_file_name, annotation_on_unknown_image])
def test_each_breakage_is_an_error(copy, breakage, capsys):
    coco = json.loads((copy / "train.json").read_text())
    expected = breakage(copy, coco)
    assert main(["--root", str(copy), "--ann", "train.json"]) == 1
    out = capsys.readouterr().out
    assert expected in out and "FAILED" in out
    if breakage in (delete_image, truncate_image):
        assert first_file(coco) in out  # the message names the file


def test_degenerate_polygon_is_a_warning(copy):
    def add_two_point_part(coco):
        ann = next(a for a in coco["annotations"] if isinstance(a["segmentation"], list))
        ann["segmentation"].append([1.0, 1.0, 5.0, 5.0])

    edit_json(copy, add_two_point_part)
    report = check_dataset(copy, "train.json")
    assert report.ok and "fewer than 3 points" in report.warnings["degenerate polygon"][0]
    assert main(["--root", str(copy), "--ann", "train.json"]) == 0  # warnings alone do not fail


def test_image_without_annotations_is_a_warning(copy):
    coco = edit_json(copy, lambda c: c.update(annotations=[a for a in c["annotations"]
                                                             if a["image_id"] != c["images"][0]["id"]]))
    report = check_dataset(copy, "train.json")
    assert report.ok and report.warnings["no annotations"] == [
        f"image {coco['images'][0]['id']} ({coco['images'][0]['file_name']}) has no annotations"]


def test_long_problem_lists_are_cut(copy, capsys):
    edit_json(copy, lambda c: [im.update(width=99) for im in c["images"]])
    assert main(["--root", str(copy), "--ann", "train.json"]) == 1
    assert "... and 14 more" in capsys.readouterr().out  # 24 images, 10 shown


def test_real_sample_passes(recycle_sample):
    report = check_dataset(recycle_sample, "train.json")
    assert report.ok and report.images == 50 and report.annotations == 404


def test_cli_exit_code(copy):
    truncate_image(copy, json.loads((copy / "train.json").read_text()))
    run = subprocess.run([sys.executable, "-m", "trashseg.data.check", "--root", str(copy), "--ann", "train.json"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "truncated JPEG" in run.stdout
