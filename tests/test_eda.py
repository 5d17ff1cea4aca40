"""EDA on a hand-made COCO file whose statistics are known exactly."""

import json
from collections import Counter

import cv2
import numpy as np
from PIL import Image

from trashseg.tools.eda import main


def test_two_overlapping_squares(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    cv2.imwrite(str(root / "img/a.jpg"), np.zeros((20, 20, 3), np.uint8))
    cv2.imwrite(str(root / "img/b.jpg"), np.zeros((20, 30, 3), np.uint8))
    square = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    coco = {
        "images": [{"id": 5, "file_name": "img/a.jpg", "height": 20, "width": 20},
                   {"id": 9, "file_name": "img/b.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 2, "name": "Paper"}, {"id": 6, "name": "Plastic"}],
        "annotations": [  # 10x10 Paper and 6x6 Plastic sharing a 4x4 block; one lone Plastic 5x4
            {"id": 1, "image_id": 5, "category_id": 2, "segmentation": square(0, 0, 10, 10), "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 6, "segmentation": square(6, 6, 12, 12), "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 6, "segmentation": square(0, 0, 5, 4), "iscrowd": 0},
        ],
    }
    (root / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "eda"
    assert main(["--root", str(root), "--ann", "ann.json", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in report.splitlines()
            if line.startswith("| ") and line.count("|") == 6}
    # images, instances, mean area, pixel share; total pixels 400 + 600 = 1000
    assert rows["Paper"][:2] == ["1", "1"] and float(rows["Paper"][2]) == 100
    assert float(rows["Paper"][3]) == (100 - 16) / 10  # area_desc: the small Plastic stays on top
    assert rows["Plastic"][:2] == ["2", "2"] and float(rows["Plastic"][2]) == (36 + 20) / 2
    assert float(rows["Plastic"][3]) == (36 + 20) / 10
    assert "| pixels claimed by 2+ objects    |" in report and "16" in report.split("pixels claimed by 2+ objects")[1][:30]
    assert "| Paper     | Plastic   |              16 |" in report
    for png in ("class_pixel_share.png", "class_instances.png", "objects_per_image.png", "overlap_pairs.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 500 and len(np.unique(np.asarray(image.convert("L")))) > 5


def test_synthetic_set_counts_match_the_json(synthetic_root, tmp_path):
    coco = json.loads((synthetic_root / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = Counter(names[a["category_id"]] for a in coco["annotations"])
    assert main(["--root", str(synthetic_root), "--ann", "train.json", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    for name, n in expected.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} "))
        assert int(row.split("|")[3]) == n
    overlapping = int(report.split("images with overlapping objects")[1].split("|")[1])
    assert overlapping >= 3  # the generator puts an overlap in every third image


def test_runs_on_the_real_sample(recycle_sample, tmp_path):
    assert main(["--root", str(recycle_sample), "--ann", "val.json", "--out", str(tmp_path)]) == 0
    assert "10 images, 103 objects" in (tmp_path / "report.md").read_text()


def _four_images(root):
    """Three 10x10 images with a 20 px Paper; the fourth adds a 20 px Battery beside its Paper."""
    (root / "img").mkdir(parents=True)
    square = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]  # noqa: E731
    images, annotations = [], []
    for i in range(4):
        cv2.imwrite(str(root / f"img/{i}.png"), np.full((10, 10, 3), 60 * i, np.uint8))
        images.append({"id": i, "file_name": f"img/{i}.png", "height": 10, "width": 10})
        annotations.append({"id": 10 + i, "image_id": i, "category_id": 2, "segmentation": square(0, 0, 5, 4), "iscrowd": 0})
    annotations.append({"id": 20, "image_id": 3, "category_id": 9, "segmentation": square(5, 6, 10, 10), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 2, "name": "Paper"}, {"id": 9, "name": "Battery"}]}
    (root / "ann.json").write_text(json.dumps(coco))


def _training_rows(report):
    section = report.split("## Training samples")[1]
    return {line.split("|")[1].strip(): [float(c) if c.strip() != "nan" else None for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| ") and line.count("|") == 5 and "share" not in line}


def test_training_samples_follow_the_sampler(tmp_path):
    root = tmp_path / "data"
    _four_images(root)
    out = tmp_path / "eda"
    # t = 1: f(Battery) = 1/4 -> the Battery image repeats sqrt(4) = 2 times; Paper (in all) once.
    # One epoch is 5 draws: 500 pixels, Paper 5 x 20, Battery 2 x 20.
    assert main(["--root", str(root), "--ann", "ann.json", "--out", str(out), "--sampler", "class_balanced",
                 "--repeat-threshold", "1", "--samples", "5"]) == 0
    rows = _training_rows((out / "report.md").read_text())
    assert rows["Paper"][:2] == [80 / 400 * 100, 100 / 500 * 100]
    assert rows["Battery"][:2] == [20 / 400 * 100, 40 / 500 * 100]
    assert rows["Background"][:2] == [300 / 400 * 100, 360 / 500 * 100]
    assert (out / "class_pixel_share_training.png").is_file()


def test_training_samples_show_copy_paste(tmp_path):
    root = tmp_path / "data"
    _four_images(root)
    recipe = tmp_path / "cp.yaml"
    recipe.write_text("{p: 1.0, max_objects: 1, scale: [1.0, 1.0], class_weights: {Battery: 1}}")
    out = tmp_path / "eda"
    assert main(["--root", str(root), "--ann", "ann.json", "--out", str(out), "--copy-paste", str(recipe),
                 "--samples", "4"]) == 0
    rows = _training_rows((out / "report.md").read_text())
    # every image gets the 20 px Battery (the fourth may land on its own): at least 80 of 400 pixels
    assert rows["Battery"][0] == 5 and rows["Battery"][1] >= 20
