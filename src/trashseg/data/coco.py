"""Reading COCO annotation files and turning segmentations into RLE masks.

Plain `json` instead of a pycocotools COCO object: the dataset keeps only what it needs
(docs/competition.md, What the usual baseline code gets wrong, mistake 9), and pycocotools' mask API does the geometry.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


class UnknownCategoryError(ValueError):
    """A COCO category whose name is not in the configured class list."""


def read_coco(ann_file: str | Path) -> dict:
    """The parsed annotation file, with one clear line when it is missing or not COCO."""
    return parse_coco(annotation_bytes(ann_file), ann_file)


def annotation_bytes(ann_file: str | Path) -> bytes:
    """An annotation file's bytes, with one clear line when it is missing."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path} (check data.root and the *_ann keys)")
    return path.read_bytes()


def parse_coco(raw: bytes, ann_file: str | Path) -> dict:
    """The COCO dict of an annotation file's bytes `raw`; one line naming `ann_file` if it is not one."""
    try:
        coco = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {err}") from None
    if not isinstance(coco, dict) or "images" not in coco:
        raise ValueError(f"annotation file {ann_file} has no 'images' list: not a COCO file")
    return coco


def label_map(categories: Sequence[Mapping], classes: Sequence[str]) -> dict[int, int]:
    """COCO category id -> label index, matched by NAME (never by position in the JSON)."""
    index = {name: i for i, name in enumerate(classes)}
    mapping = {}
    for cat in categories:
        name = cat["name"]
        if name not in index or index[name] == 0:
            close = difflib.get_close_matches(name, classes[1:], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownCategoryError(
                f"category {name!r} (id {cat['id']}) is not in the class list {list(classes[1:])}{hint} "
                "Add it to data.classes or fix the annotation file."
            )
        mapping[int(cat["id"])] = index[name]
    return mapping


def is_degenerate_polygon(poly: Sequence[float]) -> bool:
    """Fewer than 3 points (6 coordinates) encloses no area.

    pycocotools would even read a 4-coordinate polygon as a bounding box.
    """
    return len(poly) < 6


def segmentation_to_rle(segmentation, height: int, width: int) -> dict | None:
    """Polygons (multi-part), compressed or uncompressed RLE -> one compressed RLE.

    Degenerate polygon parts are skipped; None when nothing drawable is left.
    """
    if isinstance(segmentation, Mapping):
        size = list(segmentation.get("size", []))
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(segmentation, height, width)
        return dict(segmentation)
    polygons = [p for p in segmentation if not is_degenerate_polygon(p)]
    if not polygons:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def decode(rle: Mapping) -> np.ndarray:
    """A compressed RLE -> uint8 H x W mask of 0/1."""
    return mask_utils.decode(rle)


def rle_area(rle: Mapping) -> int:
    return int(mask_utils.area(rle))
