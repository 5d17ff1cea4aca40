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
