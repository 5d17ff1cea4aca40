"""EDA on a hand-made COCO file whose statistics are known exactly."""

import json

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
