"""Items per second per worker of the training dataset vs the baseline loader, side by side.

One process, one core, no augmentation: decode + mask + tensor for every image of
../shared/data/recycle-sample (train + val, 60 images). Rounds alternate between the loaders
and the median round is reported, so machine noise hits both alike.

    python benchmarks/bench_loader.py [--root ../shared/data/recycle-sample] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

from trashseg.data import CLASSES, CocoSegmentationDataset
from markdown_row import record

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "recycle-sample"


class BaselineDataset:
    """The official baseline's loader (DESIGN.md section 2), kept faithful on purpose."""

    def __init__(self, root: Path, ann_file: str):
        self.root = root
        self.coco = COCO(str(root / ann_file))
        self.category_names = list(CLASSES)

    def __len__(self):
        return len(self.coco.getImgIds())

    def __getitem__(self, index):
        image_id = self.coco.getImgIds(imgIds=index)  # the baseline's lookup (DESIGN.md section 2, mistake 1), on purpose
        image_infos = self.coco.loadImgs(image_id)[0]
        images = cv2.imread(str(self.root / image_infos["file_name"]))
        images = cv2.cvtColor(images, cv2.COLOR_BGR2RGB).astype(np.float32)
        images /= 255.0
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_infos["id"]))
        cats = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
        masks = np.zeros((image_infos["height"], image_infos["width"]))
        anns = sorted(anns, key=lambda idx: len(idx["segmentation"][0]), reverse=False)
        for ann in anns:
            pixel_value = self.category_names.index(cats[ann["category_id"]])
            masks[self.coco.annToMask(ann) == 1] = pixel_value
        masks = masks.astype(np.int8)
        # ToTensorV2, as the baseline's transform
        return torch.from_numpy(images.transpose(2, 0, 1)), torch.from_numpy(masks)


def seconds_per_pass(datasets) -> float:
    start = time.perf_counter()
    for ds in datasets:
        for i in range(len(ds)):
            ds[i]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"recycle-sample not found at {args.root}; pass --root")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    splits = ["train.json", "val.json"]
    n = sum(len(CocoSegmentationDataset(args.root, s, mode="test")) for s in splits)
    baseline = [BaselineDataset(args.root, s) for s in splits]

    times = {"baseline": [], "ours, cold cache": [], "ours, warm cache": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as cache:
            ours = [CocoSegmentationDataset(args.root, s, cache_dir=cache) for s in splits]
            times["baseline"].append(seconds_per_pass(baseline))
            times["ours, cold cache"].append(seconds_per_pass(ours))  # rasterises and writes
            times["ours, warm cache"].append(seconds_per_pass(ours))

    base = statistics.median(times["baseline"])
    print(f"recycle-sample, {n} images of 512x512, 1 core, median of {args.rounds} rounds")
    print(f"{'loader':<18} {'ms/item':>8} {'items/s':>8} {'vs baseline':>11}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<18} {1000 * t / n:8.2f} {n / t:8.1f} {base / t:10.2f}x")
    # docs/results/loader.md: date | machine | command | variant | items/s | vs baseline
    record([[name, f"{n / statistics.median(ts):.1f}", f"{base / statistics.median(ts):.2f}x"] for name, ts in times.items()],
           threads=1)


if __name__ == "__main__":
    main()
