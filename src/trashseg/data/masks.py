"""Semantic masks from COCO objects under an explicit overlap policy (docs/competition.md,
Overlapping objects).

Objects are drawn one after another, a later object overwriting an earlier one where they
overlap; the policy decides the order:
- `area_desc` (default): largest first, so smaller objects stay on top (what the best teams used);
- `baseline`: the official baseline's rule, ascending `len(segmentation[0])` (vertex count of
  the first polygon only); RLE objects, which it cannot sort, count as 0 and are drawn first;
- `class_max`: ascending label, so the higher label wins.
Ties keep the annotation file's order (stable sort), as the baseline's `sorted` does.

Crowd regions (`iscrowd: 1`) are ordinary objects under `crowd="label"`; under
`crowd="ignore"` they are painted last with IGNORE_INDEX so neither loss nor metric counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .classes import IGNORE_INDEX
from .coco import decode, rle_area, segmentation_to_rle

OVERLAP_POLICIES = ("area_desc", "baseline", "class_max")
CROWD_MODES = ("label", "ignore")


class SegObject(NamedTuple):
    """One annotation, reduced to what a mask needs."""

    label: int
    segmentation: object  # polygons (list of lists) or an RLE dict
    iscrowd: bool


def validate_policy(overlap: str, crowd: str) -> None:
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"unknown overlap policy {overlap!r}; choose one of {OVERLAP_POLICIES}")
    if crowd not in CROWD_MODES:
        raise ValueError(f"unknown crowd mode {crowd!r}; choose one of {CROWD_MODES}")


def _baseline_key(obj: SegObject) -> int:
    seg = obj.segmentation
    return len(seg[0]) if isinstance(seg, list) and seg else 0


def draw_order(objects: Sequence[SegObject], rles: Sequence[dict | None], overlap: str) -> list[int]:
    """Indices of `objects` in the order they are painted (later ones end up on top)."""
    indices = range(len(objects))
    if overlap == "area_desc":
        areas = [rle_area(r) if r is not None else 0 for r in rles]
        return sorted(indices, key=lambda i: -areas[i])
    if overlap == "baseline":
        return sorted(indices, key=lambda i: _baseline_key(objects[i]))
    return sorted(indices, key=lambda i: objects[i].label)


def rasterize(
    objects: Sequence[SegObject], height: int, width: int, overlap: str = "area_desc", crowd: str = "label"
) -> np.ndarray:
    """uint8 H x W label map of `objects` (0 where none is)."""
    # Fortran order like pycocotools' decoded masks: copyto then streams through both alike.
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = [segmentation_to_rle(o.segmentation, height, width) for o in objects]
    order = draw_order(objects, rles, overlap)
    if crowd == "ignore":  # crowd regions go on top of everything, whatever the policy
        order = [i for i in order if not objects[i].iscrowd] + [i for i in order if objects[i].iscrowd]
    for i in order:
        if rles[i] is None:
            continue
        value = IGNORE_INDEX if crowd == "ignore" and objects[i].iscrowd else objects[i].label
        np.copyto(mask, value, where=decode(rles[i]).view(bool))
    return np.ascontiguousarray(mask)


def object_masks(objects: Sequence[SegObject], height: int, width: int) -> list[tuple[int, np.ndarray]]:
    """Each object's own (label, 0/1 mask), for copy-paste and statistics."""
    out = []
    for obj in objects:
        rle = segmentation_to_rle(obj.segmentation, height, width)
        if rle is not None:
            out.append((obj.label, decode(rle)))
    return out
