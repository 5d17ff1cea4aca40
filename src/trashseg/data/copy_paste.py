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
the dataset's overlap policy), so a pasted object never carries a neighbour's pixels. Its crops
are cut once per image into the mask cache, keyed by that image's mask key and its file: every
annotation file (train, train_all, each fold) and every choice of classes that holds the image
shares the entry. An item reads only the few crops it pastes, from the page cache that every
DataLoader worker shares. Every random choice comes from the item's seed, which the training
sampler derives from (seed, epoch, index): a resumed run pastes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .cache import MaskCache


class ObjectSource(Protocol):
    """What the object pool is cut from (a CocoSegmentationDataset is one): the copy-paste module
    needs these members only, so it never imports the dataset that uses it."""

    classes: list[str]
    ann_path: Path
    label_presence: np.ndarray
    file_names: np.ndarray
    image_root: Path
    cache: MaskCache | None
    mask_keys: np.ndarray | None

    def mask(self, index: int) -> np.ndarray: ...

    def object_masks(self, index: int): ...

    def read_image(self, index: int): ...


KEYS = ("p", "max_objects", "scale", "class_weights")
POOL_VERSION = 2  # 1: one crops file per annotation file and class selection
MIN_PIXELS = 16  # smaller visible remnants (a sliver under an occluder) would paste as noise
_STREAM = 0x0C0B1E  # decorrelates copy-paste draws from albumentations', which use the same item seed
_ROW = ("label", "offset", "height", "width")  # an object of one image's crops


class ObjectPool:
    """Objects as RGB + 0/1 alpha crops: `meta` rows (label, source image, part, offset, height,
    width) into `parts`, each one image's crops as a flat uint8 buffer: a file of the cache, or an
    array when there is no cache (or it cannot be written)."""

    def __init__(self, meta: np.ndarray, parts: list[Path | np.ndarray]):
        self.meta, self.parts = meta, parts
        self.by_label = {int(label): np.flatnonzero(meta[:, 0] == label) for label in np.unique(meta[:, 0])}

    def __len__(self) -> int:
        return len(self.meta)

    def crop(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb h x w x 3, alpha h x w of 0/1) of object k."""
        _, _, part, offset, height, width = (int(v) for v in self.meta[k])
        source, size = self.parts[part], height * width * 4
        flat = source[offset: offset + size] if isinstance(source, np.ndarray) else \
            np.fromfile(source, np.uint8, count=size, offset=offset)
        rgba = flat.reshape(height, width, 4)
        return rgba[..., :3], rgba[..., 3]

    @classmethod
    def build(cls, dataset: ObjectSource, labels: list[int]) -> ObjectPool:
        """Every object of `labels` in the dataset: each image's crops from the cache, else cut now
        (and cached when the dataset has a writable cache)."""
        wanted = set(labels)
        rows, parts = [], []
        for index in _source_images(dataset, labels):
            part, objects = _image_crops(dataset, int(index), labels)
            keep = [(label, int(index), len(parts), offset, h, w) for label, offset, h, w in objects if label in wanted]
            if keep:
                rows += keep
                parts.append(part)
        return cls(np.array(rows, np.int64).reshape(-1, 6), parts)


def _image_crops(dataset: ObjectSource, index: int, labels: list[int]) -> tuple[Path | np.ndarray, np.ndarray]:
    """(the image's crops, their rows as in `_ROW`). With a cache, every label's objects are cut and
    stored, so any class selection reuses the entry; the rows are written last, marking it whole."""
    cache = dataset.cache
    key = None if cache is None else _crops_key(dataset, index)
    if key is None:
        return _cut_objects(dataset, index, labels)
    crops, rows = cache.path("objects", key, ".bin"), cache.path("objects", key, ".npy")
    if crops.is_file():
        try:
            return crops, np.load(rows, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent (the crops were being written), or torn by a crash
            pass
    flat, objects = _cut_objects(dataset, index, list(range(1, len(dataset.classes))))
    buffer = io.BytesIO()
    np.save(buffer, objects, allow_pickle=False)
    if cache.write(crops, flat.tobytes()) and cache.write(rows, buffer.getvalue()):
        return crops, objects
    return flat, objects


def _crops_key(dataset: ObjectSource, index: int) -> str | None:
    """The crops depend on the image's mask (its key covers annotations, size, classes, overlap,
    crowd) and on the image file's pixels, which no annotation covers: its path, size and time.
    None for an image that cannot be read (cutting it then names the file)."""
    path = Path(dataset.image_root) / str(dataset.file_names[index])
    try:
        stat = os.stat(path)
    except OSError:
        return None
    parts = [POOL_VERSION, MIN_PIXELS, str(dataset.mask_keys[index]), str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _cut_objects(dataset: ObjectSource, index: int, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(flat RGBA crops, rows as in `_ROW`) of the image's visible objects of `labels`."""
    wanted = set(labels)
    rows, chunks, offset, image = [], [], 0, None
    semantic = dataset.mask(index)
    for label, object_mask in dataset.object_masks(index):
        if label not in wanted:
            continue
        visible = object_mask.astype(bool) & (semantic == label)
        if visible.sum() < MIN_PIXELS:
            continue
        if image is None:
            image = dataset.read_image(index).permute(1, 2, 0).numpy()
        ys, xs = np.nonzero(visible)
        box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        rgba = np.concatenate([image[box], visible[box][..., None].astype(np.uint8)], axis=2)
        chunks.append(np.ascontiguousarray(rgba).ravel())
        rows.append((label, offset, *rgba.shape[:2]))
        offset += chunks[-1].size
    flat = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return flat, np.array(rows, np.int64).reshape(-1, len(_ROW))


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


def pool_labels(cfg: Mapping, classes: list[str]) -> list[int]:
    weights = cfg["class_weights"]
    return sorted(weights) if isinstance(weights, Mapping) else list(range(1, len(classes)))


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
        pool = ObjectPool.build(source, pool_labels(cfg, source.classes))
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
