"""benchmarks/bench_scale.py: its dense-polygon data keeps the masks, its growth exponent, and the
whole loop at a tiny size (CI never runs it at the competition's size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trashseg.data.coco import decode, segmentation_to_rle

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_scale  # noqa: E402  (a script folder, not a package)


def test_densified_polygons_raster_to_the_same_mask(synthetic_root):
    coco = json.loads((synthetic_root / "train.json").read_text())
    changed = area = 0
    for ann in (a for a in coco["annotations"] if isinstance(a["segmentation"], list)):
        pieces = [p for polygon in ann["segmentation"] for p in bench_scale.densified(polygon, 3, 300)]
        # 3 fans per outline; a triangle or rectangle (under 9 vertices) stays one polygon, only denser
        assert len(pieces) == sum(3 if len(p) // 2 >= 9 else 1 for p in ann["segmentation"])
        assert all(len(p) // 2 >= 300 for p in pieces)
        before, after = (decode(segmentation_to_rle(seg, 64, 64)) for seg in (ann["segmentation"], pieces))
        changed += int((before != after).sum())
        area += int(before.sum())
    # only edge pixels move (pycocotools rounds a denser outline a little differently); no seams inside
    assert area > 0 and changed / area < 0.02


def test_growth_is_the_exponent_from_smallest_to_largest():
    assert bench_scale.growth(10.0, 40.0, 4.0) == "1.00"  # linear
    assert bench_scale.growth(10.0, 10.0, 4.0) == "0.00"  # constant
    assert bench_scale.growth(1.0, 16.0, 4.0) == "2.00"  # quadratic
    assert bench_scale.growth(0.0, 5.0, 4.0) == "-"  # nothing written at the smallest size: no exponent
    # above a fixed cost of 30 s: linear 30 + 10n and quadratic 30 + 10n^2 over n = 1, 2, 4
    assert bench_scale.marginal_growth([40.0, 50.0, 70.0], [0.25, 0.5, 1.0]) == "1.00"
    assert bench_scale.marginal_growth([40.0, 70.0, 190.0], [0.25, 0.5, 1.0]) == "2.00"
    assert bench_scale.marginal_growth([40.0, 70.0], [0.25, 1.0]) == "-"  # needs three sizes, each double the last


@pytest.mark.slow
def test_whole_loop_at_a_tiny_size(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_scale.py"), "--data", str(data), "--work", str(work),
                          "--scales", "0.005", "--size", "64", "--steps", "1", "--predict-scale", "0.5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # 0.005x of 2,617 / 655 / 819 images; train_all = train + val, images hard-linked from the generated set
    root = data / "0.005x_64px"
    counts = {split: len(json.loads((root / f"{split}.json").read_text())["images"]) for split in ("train", "val", "test", "train_all")}
    assert counts == {"train": 13, "val": 3, "test": 4, "train_all": 16}
    image = json.loads((root / "train.json").read_text())["images"][0]["file_name"]
    assert (root / image).stat().st_nlink == 2
    polygons = bench_scale.density(json.loads((root / "train_all.json").read_text()))
    assert polygons["vertices/polygon"] >= 300
    results = json.loads((work / "results.json").read_text())["0.005x"]
    assert list(results) == list(bench_scale.STAGES)
    assert all(r["seconds"] > 0 and r["rss_max_process_mb"] > 0 and r["rss_tree_mb"] > 0 for r in results.values())
    for stage in ("kfold", "cache", "train", "oof", "ensemble", "pseudo"):  # each writes files
        assert results[stage]["disk_mb"] > 0, stage
    assert results["check"]["disk_mb"] == 0 and results["submission_check"]["disk_mb"] == 0
    assert len(list((work / "0.005x" / "probs").glob("*.npy"))) == counts["test"]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 20")]
    assert [row.split(" | ")[3] for row in rows] == list(bench_scale.STAGES)
