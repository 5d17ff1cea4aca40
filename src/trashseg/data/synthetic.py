"""A synthetic dataset in the competition's exact layout: the built-in default for the
quickstart and the tests.

    python -m trashseg.data.synthetic --out data/synthetic [--train 200 --val 50 --test 50 --size 128 --seed 0]

Every class has its own colour, texture and shape family (with jitter), drawn on a textured
background, so a small CNN learns it in minutes on a CPU. The annotation files exercise
every path of the loader: multi-part objects, overlaps (drawn largest first, so `area_desc`
labels match the picture), compressed and uncompressed RLE, crowd regions, dense polygons,
non-contiguous image ids and categories listed out of order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from trashseg.errors import run_or_report

from .classes import CLASSES
from .coco import decode, segmentation_to_rle

BATCHES = ("batch_01_vt", "batch_02_vt", "batch_03")
# (base RGB, texture, shape) per class 1..10: each property alone nearly separates classes.
STYLES = {
    1: ((120, 100, 80), "speckle", "blob"),
    2: ((235, 230, 210), "stripes", "rectangle"),
    3: ((60, 160, 200), "checker", "hexagon"),
    4: ((185, 190, 210), "gradient", "circle"),
    5: ((90, 200, 120), "dots", "ellipse"),
    6: ((230, 60, 40), "solid", "star"),
    7: ((250, 250, 245), "noise", "rounded"),
    8: ((170, 70, 200), "diagonal", "blob"),
    9: ((240, 200, 20), "bands", "bar"),
    10: ((30, 50, 160), "grid", "triangle"),
}
# COCO `info` of every file the generator writes: whatever reads one says it is not real data.
MARKER = "trashseg_synthetic"
DESCRIPTION = "trashseg synthetic dataset"  # files written before the marker carry only this
CLASS_WEIGHTS = np.array([1.0, 1, 1, 1, 1, 1, 1, 1, 0.6, 0.6])  # Battery, Clothing rarer, as in the real data


def is_synthetic(coco: Mapping) -> bool:
    """Whether a parsed COCO file was written by this generator."""
    info = coco.get("info") or {}
    return bool(info.get(MARKER)) or str(info.get("description", "")).startswith(DESCRIPTION)


def synthetic_note(path: str | Path) -> str:
    """The one line a reader of a synthetic file prints."""
    return (f"note: {path} is trashseg's synthetic dataset (generated shapes, not competition data); "
            "a model or CSV made from it is not one for the leaderboard")


def _texture(kind: str, base: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """size x size x 3 float image of the class texture, jittered in brightness and phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    colour = np.clip(np.array(base, np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3), 0, 255)
    period = size / rng.uniform(8, 14)
    phase = rng.uniform(0, 2 * np.pi)
    patterns = {  # built lazily: only the class's own texture is computed
        "solid": lambda: np.zeros_like(xx),
        "speckle": lambda: (rng.random((size, size)) > 0.7) * 1.0 - 0.3,
        "stripes": lambda: np.sign(np.sin(yy / period * 2 * np.pi + phase)) * 0.5,
        "checker": lambda: (xx // period + yy // period) % 2 - 0.5,
        "gradient": lambda: (xx + yy) / (2 * size) - 0.5,
        "dots": lambda: ((np.sin(xx / period * 2 * np.pi + phase) * np.sin(yy / period * 2 * np.pi)) > 0.6) * 1.0 - 0.2,
        "noise": lambda: rng.normal(0, 0.15, (size, size)),
        "diagonal": lambda: np.sign(np.sin((xx + yy) / period * np.pi + phase)) * 0.5,
        "bands": lambda: np.sign(np.sin(xx / (period * 1.5) * 2 * np.pi + phase)) * 0.5,
        "grid": lambda: ((xx % period < 2) | (yy % period < 2)) * 1.0 - 0.2,
    }
    pattern = patterns[kind]()
    contrast = 70.0 if kind != "noise" else 40.0
    return np.clip(colour + pattern[..., None] * contrast, 0, 255)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(70, 130) + 30 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
    tint = rng.uniform(-12, 12, 3)
    image = base[..., None] + tint + rng.normal(0, 10, (size, size, 3))
    return np.clip(cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0), 0, 255)


def _shape(kind: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices (n x 2, float) of the class's shape family around (cx, cy)."""
    angle = rng.uniform(0, 2 * np.pi)
    if kind in ("rectangle", "bar", "hexagon", "triangle", "rounded"):
        if kind == "hexagon":
            t, radius = np.linspace(0, 2 * np.pi, 7)[:-1], np.full(6, r)
        elif kind == "triangle":
            t, radius = np.linspace(0, 2 * np.pi, 4)[:-1], np.full(3, r)
        else:
            aspect = {"rectangle": rng.uniform(0.55, 0.8), "bar": rng.uniform(0.25, 0.4), "rounded": 0.95}[kind]
            w, h = r, r * aspect
            n = 24 if kind == "rounded" else 1
            corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
            if kind == "rounded":  # corners cut by small arcs: a few dozen vertices
                arcs = [c - np.sign(c) * 0.25 * h + 0.25 * h * np.stack([np.cos(a), np.sin(a)], 1)
                        for c, a in zip(corners, [np.linspace(np.pi, 1.5 * np.pi, n), np.linspace(1.5 * np.pi, 2 * np.pi, n),
                                                  np.linspace(0, 0.5 * np.pi, n), np.linspace(0.5 * np.pi, np.pi, n)])]
                corners = np.concatenate(arcs)
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            return corners @ rot.T + [cx, cy]
    else:
        n = int(rng.integers(120, 400)) if kind in ("circle", "ellipse", "blob") else 10
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        if kind == "circle":
            radius = np.full(n, r)
        elif kind == "ellipse":
            radius = r * 0.6 / np.sqrt((0.6 * np.cos(t)) ** 2 + np.sin(t) ** 2)
        elif kind == "star":
            radius = np.where(np.arange(n) % 2 == 0, r, r * 0.45)
        else:  # blob: a few low-frequency harmonics
            radius = r * (1 + sum(rng.uniform(-0.15, 0.15) * np.sin(k * t + rng.uniform(0, 6)) for k in (2, 3, 5)))
    return np.stack([cx + radius * np.cos(t + angle), cy + radius * np.sin(t + angle)], 1)


def _polygon_segmentation(polygons: list[np.ndarray], size: int) -> list[list[float]]:
    """COCO polygon lists as stored in the JSON: clipped to the image, 0.1 px precision."""
    return [np.round(np.clip(p, 0, size), 1).ravel().tolist() for p in polygons]


def _rasterize(segmentation: list[list[float]], size: int) -> np.ndarray:
    """The object's mask exactly as the loader will rasterise the stored polygons, so the
    picture, `area` and the training labels agree pixel for pixel."""
    rle = segmentation_to_rle(segmentation, size, size)
    return np.zeros((size, size), np.uint8) if rle is None else decode(rle)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's list-of-counts RLE: column-major runs, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _objects(k: int, size: int, rng: np.random.Generator) -> list[dict]:
    """The objects of image k: class, polygons, full mask, storage kind."""
    n = int(rng.integers(2, 7))
    labels = rng.choice(np.arange(1, 11), size=n, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum())
    objects = []
    for j, label in enumerate(labels):
        r = size * rng.uniform(0.05, 0.2)
        if j == 1 and k % 3 == 0:  # a guaranteed overlap: centre inside the first object
            cx, cy = objects[0]["centre"]
        else:
            cx, cy = rng.uniform(r, size - r, 2)
        polygons = [_shape(STYLES[int(label)][2], cx, cy, r, rng)]
        if j == 0 and k % 4 == 0:  # a two-part object: a smaller piece beside the first
            dx, dy = rng.choice([-1, 1], 2) * r * 1.6
            polygons.append(_shape(STYLES[int(label)][2], np.clip(cx + dx, 0, size), np.clip(cy + dy, 0, size), r * 0.5, rng))
        storage = "polygon"
        if j == 0 and k % 5 == 1:
            storage = "rle"
        elif j == 0 and k % 7 == 2:
            storage = "rle_uncompressed"
        polygon_seg = _polygon_segmentation(polygons, size)
        objects.append({"label": int(label), "polygons": polygon_seg, "mask": _rasterize(polygon_seg, size),
                        "storage": storage, "iscrowd": 0, "centre": (cx, cy)})
    if k % 6 == 3:  # a crowd region: a cluster of small blobs of one class, one RLE annotation
        label = int(rng.integers(1, 11))
        cx, cy = rng.uniform(size * 0.2, size * 0.8, 2)
        blobs = [_shape("blob", cx + dx, cy + dy, size * 0.04, rng) for dx, dy in rng.normal(0, size * 0.06, (5, 2))]
        blob_seg = _polygon_segmentation(blobs, size)
        objects.append({"label": label, "polygons": blob_seg, "mask": _rasterize(blob_seg, size),
                        "storage": "rle_uncompressed", "iscrowd": 1, "centre": (cx, cy)})
    return [o for o in objects if o["mask"].any()]


def _segmentation(obj: dict) -> list | dict:
    if obj["storage"] == "rle":
        return _compressed_rle(obj["mask"])
    if obj["storage"] == "rle_uncompressed":
        return _uncompressed_rle(obj["mask"])
    return obj["polygons"]


def _render(objects: list[dict], size: int, rng: np.random.Generator) -> np.ndarray:
    image = _background(size, rng)
    for obj in sorted(objects, key=lambda o: -int(o["mask"].sum())):  # largest first: small ones stay visible
        base, texture, _ = STYLES[obj["label"]]
        inside = obj["mask"].astype(bool)
        image[inside] = _texture(texture, base, size, rng)[inside]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _categories(rng: np.random.Generator) -> list[dict]:
    order = rng.permutation(np.arange(1, len(CLASSES)))  # listed out of order: the loader maps by name
    return [{"id": int(i), "name": CLASSES[i], "supercategory": CLASSES[i]} for i in order]


def _write_image(path: Path, image: np.ndarray) -> None:
    # cv2 writes BGR; it reports a failed write only through its return value.
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}; check that the output folder is writable")


def _annotation(ann_id: int, image_id: int, obj: dict) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": obj["label"], "segmentation": _segmentation(obj),
            "area": float(obj["mask"].sum()), "bbox": _bbox(obj["mask"]), "iscrowd": obj["iscrowd"]}


def _write_splits(root: Path, n_train: int, n_val: int, n_test: int, size: int, seed: int) -> None:
    """Images into the batch folders, then train/val/train_all/test JSON and the sample CSV."""
    rng = np.random.default_rng(seed)
    total = n_train + n_val + n_test
    image_ids = np.sort(rng.choice(np.arange(3 * total + 10), size=total, replace=False))  # gaps between ids
    categories = _categories(rng)
    splits = {name: {"images": [], "annotations": []} for name in ("train", "val", "test")}
    ann_id = 1
    for k in range(total):
        split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
        objects = _objects(k, size, rng)
        file_name = f"{BATCHES[int(rng.integers(len(BATCHES)))]}/{k:04d}.jpg"
        _write_image(root / file_name, _render(objects, size, rng))
        image_id = int(image_ids[k])
        splits[split]["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        if split == "test":  # the test split ships without annotations, as in the competition
            continue
        for obj in objects:
            splits[split]["annotations"].append(_annotation(ann_id, image_id, obj))
            ann_id += 1
    splits["train_all"] = {key: splits["train"][key] + splits["val"][key] for key in ("images", "annotations")}
    info = {"description": f"{DESCRIPTION}, seed {seed}", "version": "1.0", MARKER: True}
    for name, split in splits.items():
        coco = {"info": info, "images": split["images"], "annotations": split["annotations"], "categories": categories}
        (root / f"{name}.json").write_text(json.dumps(coco))
    (root / "sample_submission.csv").write_text("image_id,PredictionString\n")


def generate_dataset(
    out: str | Path, n_train: int = 200, n_val: int = 50, n_test: int = 50, size: int = 128, seed: int = 0, force: bool = False
) -> Path:
    """Write the dataset into `out`: built in `out.tmp-<pid>` and renamed only when complete,
    so a crash never leaves a dataset that looks whole (nor destroys the one it replaces)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for batch in BATCHES:
        (tmp / batch).mkdir(parents=True)
    try:
        _write_splits(tmp, n_train, n_val, n_test, size, seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic trash dataset in the competition's layout.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    args = parser.parse_args(argv)
    def generate() -> str:
        out = generate_dataset(args.out, args.train, args.val, args.test, args.size, args.seed, args.force)
        return f"wrote {args.train} train, {args.val} val, {args.test} test images of {args.size}px to {out}"

    return run_or_report(generate, error_code=2)


if __name__ == "__main__":
    sys.exit(main())
