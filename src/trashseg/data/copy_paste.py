"""Simple copy-paste (Ghiasi et al. 2021): objects cut out of training images with their own
masks, flipped and scale-jittered, pasted on top of another training image; pasted pixels
occlude what was there, in the image and in the mask.

Configured in the augment YAML (`augment.copy_paste`, e.g. configs/augment/copy_paste/rare.yaml):

    p: 0.5              # chance that an image gets pastes at all
    max_objects: 3      # then 1..max_objects objects, uniformly
    scale: [0.5, 1.5]   # each object resized by a factor drawn from this range (never beyond the image)
    class_weights: {Battery: 5, Clothing: 3}   # paste only these classes, at these relative rates;
                        # `rarity`: every class, at rates ~ 1/sqrt(its object count);
                        # null: every class, at rates ~ its object count (objects drawn uniformly)

The pool holds each object's VISIBLE pixels (its own mask minus what other objects cover under
the dataset's overlap policy), so a pasted object never carries a neighbour's pixels. It is
built once from the dataset's per-object masks and stored beside the mask cache as two flat
files, memory-mapped: every DataLoader worker reads the same page-cache pages, nothing is
copied per worker. Every random choice comes from the item's seed, which the training sampler
derives from (seed, epoch, index): a resumed run pastes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np



class ObjectSource(Protocol):
    """What the object pool is cut from (a CocoSegmentationDataset is one): the copy-paste module
    needs these members only, so it never imports the dataset that uses it."""

    classes: list[str]
    ann_path: Path
    label_presence: np.ndarray
    file_names: np.ndarray
    image_root: Path
    cache: object | None

    def mask(self, index: int) -> np.ndarray: ...

    def object_masks(self, index: int): ...

    def read_image(self, index: int): ...

KEYS = ("p", "max_objects", "scale", "class_weights")
POOL_VERSION = 1
MIN_PIXELS = 16  # smaller visible remnants (a sliver under an occluder) would paste as noise
_STREAM = 0x0C0B1E  # decorrelates copy-paste draws from albumentations', which use the same item seed


class ObjectPool:
    """Objects as RGB + 0/1 alpha crops: `meta` rows (label, source image, offset, height, width)
    into one flat uint8 buffer of `crops`."""

    META_COLUMNS = 5

    def __init__(self, meta: np.ndarray, crops: np.ndarray, folder: Path | None = None):
        self.meta, self.crops, self.folder = meta, crops, folder
        self.by_label = {int(label): np.flatnonzero(meta[:, 0] == label) for label in np.unique(meta[:, 0])}

    def __len__(self) -> int:
        return len(self.meta)

    def crop(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb h x w x 3, alpha h x w of 0/1) of object k, views into the buffer (read-only)."""
        _, _, offset, height, width = (int(v) for v in self.meta[k])
        rgba = self.crops[offset: offset + height * width * 4].reshape(height, width, 4)
        return rgba[..., :3], rgba[..., 3]

    def __getstate__(self) -> dict:
        # Spawned workers: reopen the files instead of pickling the whole buffer.
        if self.folder is not None:
            return {"folder": self.folder}
        return {"meta": self.meta, "crops": self.crops, "folder": None}

    def __setstate__(self, state: dict) -> None:
        if state["folder"] is not None:
            state = vars(ObjectPool.load(state["folder"]))
        self.__init__(state["meta"], state["crops"], state["folder"])

    @classmethod
    def load(cls, folder: Path) -> ObjectPool:
        meta = np.load(folder / "meta.npy")
        crops = np.memmap(folder / "crops.bin", np.uint8, mode="r") if len(meta) else np.zeros(0, np.uint8)
        return cls(meta, crops, folder)

    @classmethod
    def build(cls, dataset: ObjectSource, labels: list[int], folder: Path | None = None) -> ObjectPool:
        """Cut every object of `labels` out of the dataset; written under `folder` (atomically:
        a half-built pool is never read), else kept in memory."""
        if folder is None:
            meta, chunks = _cut_objects(dataset, labels, sink=None)
            crops = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
            return cls(meta, crops)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with open(tmp / "crops.bin", "wb") as sink:
                meta, _ = _cut_objects(dataset, labels, sink)
            np.save(tmp / "meta.npy", meta)
            (tmp / "about.json").write_text(json.dumps({"labels": labels, "objects": len(meta)}))
            try:
                os.rename(tmp, folder)
            except OSError:  # another process (DDP rank, worker) finished it first: theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.load(folder)


def _cut_objects(dataset: ObjectSource, labels: list[int], sink) -> tuple[np.ndarray, list[np.ndarray]]:
    """Meta rows and crops (written to `sink` as they come, or returned) of every visible object."""
    wanted = set(labels)
    rows, chunks, offset = [], [], 0
    for index in _source_images(dataset, labels):
        image = None
        semantic = dataset.mask(int(index))
        for label, object_mask in dataset.object_masks(int(index)):
            if label not in wanted:
                continue
            visible = object_mask.astype(bool) & (semantic == label)
            if visible.sum() < MIN_PIXELS:
                continue
            if image is None:
                image = dataset.read_image(int(index)).permute(1, 2, 0).numpy()
            ys, xs = np.nonzero(visible)
            box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
            rgba = np.concatenate([image[box], visible[box][..., None].astype(np.uint8)], axis=2)
            flat = np.ascontiguousarray(rgba).ravel()
            if sink is None:
                chunks.append(flat)
            else:
                sink.write(flat.tobytes())
            rows.append((label, index, offset, *rgba.shape[:2]))
            offset += flat.size
    return np.array(rows, np.int64).reshape(-1, ObjectPool.META_COLUMNS), chunks


def _class_labels(names: Mapping, classes: list[str]) -> dict[int, float]:
    weights = {}
    for name, weight in names.items():
        if name not in classes[1:]:
            close = difflib.get_close_matches(str(name), classes[1:], n=3)
            raise ValueError(f"augment.copy_paste.class_weights: {name!r} is not a class of data.classes"
                             f"{'; did you mean ' + ', '.join(map(repr, close)) + '?' if close else ''} "
                             f"(classes: {', '.join(classes[1:])})")
        if not isinstance(weight, (int, float)) or weight < 0 or math.isnan(weight):
            raise ValueError(f"augment.copy_paste.class_weights.{name}: {weight!r} must be a number >= 0")
        weights[classes.index(name)] = float(weight)
    if not any(weights.values()):
        raise ValueError("augment.copy_paste.class_weights: every weight is 0, nothing would be pasted; "
                         "give at least one class a positive weight")
    return {label: w for label, w in weights.items() if w > 0}


def check_config(cfg: Mapping, classes: list[str]) -> dict:
    """The copy_paste mapping, checked (one line per problem, naming the key and the fix)."""
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ValueError(f"augment.copy_paste: unknown keys {unknown}; it takes {', '.join(KEYS)}")
    out = {"p": 0.5, "max_objects": 3, "scale": (0.5, 1.5), "class_weights": None, **cfg}
    if not 0 <= out["p"] <= 1:
        raise ValueError(f"augment.copy_paste.p = {out['p']!r}: a probability between 0 and 1")
    if not isinstance(out["max_objects"], int) or out["max_objects"] < 1:
        raise ValueError(f"augment.copy_paste.max_objects = {out['max_objects']!r}: a whole number >= 1")
    scale = out["scale"]
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise ValueError(f"augment.copy_paste.scale = {scale!r}: give [lo, hi] with 0 < lo <= hi, e.g. [0.5, 1.5]")
    out["scale"] = (float(scale[0]), float(scale[1]))
    weights = out["class_weights"]
    if isinstance(weights, Mapping):
        out["class_weights"] = _class_labels(weights, classes)
    elif weights not in (None, "rarity"):
        raise ValueError(f"augment.copy_paste.class_weights = {weights!r}: give a mapping {{class name: weight}}, "
                         "'rarity' or null")
    return out


def _source_images(dataset: ObjectSource, labels: list[int]) -> np.ndarray:
    """Indices of the images the pool cuts objects from: those holding any of `labels`."""
    return np.flatnonzero(dataset.label_presence[:, labels].any(1))


def _image_identity(dataset: ObjectSource, labels: list[int]) -> list:
    """The image root and (file name, size, mtime_ns) of every source image: the crops' pixels come
    from these files, which the masks' key (annotation bytes) does not cover. A missing file is None
    here; building the pool then names it."""
    files = []
    for index in _source_images(dataset, labels):
        name = str(dataset.file_names[index])
        try:
            stat = os.stat(dataset.image_root / name)
            files.append([name, stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([name, None, None])
    return [str(Path(dataset.image_root).resolve()), files]


def pool_folder(dataset: ObjectSource, labels: list[int]) -> Path | None:
    """Beside the dataset's masks (whose cache key covers annotations, classes, overlap, crowd), keyed
    also by the image files the crops are cut from: a changed image, or another image root, builds anew."""
    if dataset.cache is None:
        return None
    parts = [POOL_VERSION, MIN_PIXELS, sorted(labels), _image_identity(dataset, labels)]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    return dataset.cache.folder / f"copy_paste_{key}"


def pool_labels(cfg: Mapping, classes: list[str]) -> list[int]:
    weights = cfg["class_weights"]
    return sorted(weights) if isinstance(weights, Mapping) else list(range(1, len(classes)))


def load_or_build_pool(dataset: ObjectSource, labels: list[int]) -> ObjectPool:
    folder = pool_folder(dataset, labels)
    if folder is not None and (folder / "meta.npy").is_file():
        return ObjectPool.load(folder)
    return ObjectPool.build(dataset, labels, folder)


class CopyPaste:
    """`copy_paste(image, mask, seed)` pastes onto uint8 H x W x 3 `image` and H x W `mask` in place."""

    def __init__(self, cfg: Mapping, pool: ObjectPool, classes: list[str], source: Path):
        """`cfg` checked by `check_config`; `pool` the objects to paste, cut from the annotation file
        `source` (named in messages)."""
        self.p, self.max_objects, self.scale = cfg["p"], cfg["max_objects"], cfg["scale"]
        self.pool = pool
        counts = {label: len(objects) for label, objects in self.pool.by_label.items()}
        weights = cfg["class_weights"]
        if isinstance(weights, Mapping):
            missing = [classes[label] for label in weights if label not in counts]
            if missing and len(missing) < len(weights):
                warnings.warn(f"augment.copy_paste: no object of {', '.join(missing)} (of {MIN_PIXELS}+ visible pixels) "
                              f"in {Path(source).name} to paste; the other classes are pasted", stacklevel=4)
            rates = {label: weights[label] for label in counts}
        elif weights == "rarity":
            rates = {label: 1 / math.sqrt(n) for label, n in counts.items()}
        else:
            rates = {label: float(n) for label, n in counts.items()}
        if not rates:
            raise ValueError(f"augment.copy_paste: {source} holds no object of {MIN_PIXELS}+ visible pixels of "
                             f"the classes to paste ({', '.join(classes[label] for label in pool_labels(cfg, classes))}); "
                             "name classes it has in class_weights")
        self.labels = np.array(sorted(rates))
        self.rates = np.array([rates[label] for label in self.labels]) / sum(rates.values())

    @classmethod
    def from_source(cls, cfg: Mapping, source: ObjectSource) -> CopyPaste:
        """Check an `augment.copy_paste` mapping and load (or cut) the pool of `source`'s objects."""
        cfg = check_config(cfg, source.classes)
        pool = load_or_build_pool(source, pool_labels(cfg, source.classes))
        return cls(cfg, pool, source.classes, source.ann_path)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng([seed, _STREAM])
        if rng.random() >= self.p:
            return
        height, width = mask.shape
        for _ in range(rng.integers(1, self.max_objects + 1)):
            label = int(rng.choice(self.labels, p=self.rates))
            rgb, alpha = self.pool.crop(int(rng.choice(self.pool.by_label[label])))
            factor = min(rng.uniform(*self.scale), height / alpha.shape[0], width / alpha.shape[1])
            flip = rng.random() < 0.5
            h, w = max(1, round(alpha.shape[0] * factor)), max(1, round(alpha.shape[1] * factor))
            if (h, w) != alpha.shape:
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
                alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_NEAREST)  # a label mask: never blended
            if flip:
                rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            region = alpha.view(bool)
            np.copyto(image[y: y + h, x: x + w], rgb, where=region[..., None])
            np.copyto(mask[y: y + h, x: x + w], label, where=region)
