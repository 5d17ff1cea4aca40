"""Items per second per worker of the training dataset vs the baseline loader, side by side;
then what a cached mask costs to load in each file format, against the JPEG decode of its image.

One process, one core, no augmentation: decode + mask + tensor for every image of
../shared/data/recycle-sample (train + val, 60 images). Rounds alternate between the loaders
(and between the mask formats) and the median round is reported, so machine noise hits all alike.

    python benchmarks/bench_loader.py [--root ../shared/data/recycle-sample] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO

from trashseg.data import CLASSES, CocoSegmentationDataset
from trashseg.data.cache import decode_mask, encode_mask
from trashseg.data.image_io import read_rgb
from markdown_row import record

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "recycle-sample"


class BaselineDataset:
    """The official baseline's loader (docs/competition.md, The baseline loader), kept faithful on purpose."""

    def __init__(self, root: Path, ann_file: str):
        self.root = root
        self.coco = COCO(str(root / ann_file))
        self.category_names = list(CLASSES)

    def __len__(self):
        return len(self.coco.getImgIds())

    def __getitem__(self, index):
        image_id = self.coco.getImgIds(imgIds=index)  # the baseline's lookup (docs/competition.md, mistake 1), on purpose
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


def _npz(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mask=mask)
    return buffer.getvalue()


def _npy(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, mask, allow_pickle=False)
    return buffer.getvalue()


# name -> (suffix, encode, decode from the file's path); each reads the whole file, as the cache does
MASK_FORMATS = {
    ".npy (cache v1)": (".npy", _npy, lambda p: np.load(p, allow_pickle=False)),
    ".npy.zlib level 1 (cache v2)": (".npy.zlib", encode_mask, lambda p: decode_mask(p.read_bytes())),
    ".npz (np.savez_compressed)": (".npz", _npz, lambda p: np.load(p)["mask"]),
    ".png level 1 (OpenCV)": (".png", lambda m: cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
                              lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)),
}


def mask_formats(datasets: list[CocoSegmentationDataset], rounds: int) -> list[list[object]]:
    """ms to load a mask per format and its bytes, beside the JPEG decode of the image (read_rgb)."""
    images = [ds.image_root / str(name) for ds in datasets for name in ds.file_names]
    masks = [ds.mask(i) for ds in datasets for i in range(len(ds))]
    with tempfile.TemporaryDirectory() as folder:
        files, sizes = {}, {}
        for name, (suffix, encode, decode) in MASK_FORMATS.items():
            files[name] = [Path(folder) / f"{k}{suffix}" for k in range(len(masks))]
            for path, mask in zip(files[name], masks):
                path.write_bytes(encode(mask))
                assert np.array_equal(decode(path), mask), name  # lossless, or it is no mask format
            sizes[name] = statistics.mean(path.stat().st_size for path in files[name])
        times = {"JPEG decode of the image": []} | {name: [] for name in MASK_FORMATS}
        for _ in range(rounds):
            for name in times:
                start = time.perf_counter()
                if name in MASK_FORMATS:
                    for path in files[name]:
                        MASK_FORMATS[name][2](path)
                else:
                    for path in images:
                        read_rgb(path)
                times[name].append((time.perf_counter() - start) / len(masks))
    jpeg = statistics.median(times["JPEG decode of the image"])
    print(f"\n{len(masks)} masks of 512x512, median of {rounds} rounds")
    print(f"{'mask file':<30} {'ms/mask':>8} {'vs JPEG':>8} {'bytes':>8} {'vs .npy':>8}")
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        size = sizes.get(name)
        shrink = f"{sizes['.npy (cache v1)'] / size:.0f}x smaller" if size else "-"
        print(f"{name:<30} {1000 * t:8.2f} {t / jpeg:7.2f}x {size or 0:8.0f} {shrink:>8}")
        rows.append([name, f"{1000 * t:.2f}", f"{t / jpeg:.2f}x", f"{size:,.0f}" if size else "-", shrink])
    return rows


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
    # docs/results/disk.md: date | machine | command | mask file | ms/mask | vs JPEG decode | bytes | vs .npy
    record(mask_formats([CocoSegmentationDataset(args.root, s, cache_dir=False) for s in splits], args.rounds), threads=1)


if __name__ == "__main__":
    main()
