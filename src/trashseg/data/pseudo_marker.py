"""Pseudo-label files say what they are, so they are never read as real labels by mistake.

The pseudo-labeller (`trashseg.inference.pseudo`) writes its unconfident pixels as `iscrowd: 1`
regions. Read with the default `crowd: label`, those regions train as the class they carry (one
run turned 1,999 unconfident pixels into Styrofoam); only `crowd: ignore` makes them 255. The
writer marks its files in the COCO `info`, and the data module refuses a marked file as an extra
training source unless that source (or the main data) reads crowd regions as ignore.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .coco import read_coco

MARKER = "trashseg_pseudo_labels"  # key in the COCO `info` dict, value true


def marked(info: Mapping) -> dict:
    """`info` with the pseudo-label marker."""
    return {**info, MARKER: True}


def is_pseudo_labels(coco: Mapping) -> bool:
    return bool((coco.get("info") or {}).get(MARKER))


def refuse_pseudo_labels_as_labels(i: int, source: Mapping, root: str | Path, crowd: str) -> Mapping:
    """`source` (data.extra_train[i]) unchanged; a ValueError naming the file and the fix when it is
    a pseudo-label file read with crowd regions as labels (its own `crowd`, else the main `crowd`)."""
    crowd = source.get("crowd") or crowd
    if crowd == "ignore":
        return source
    path = Path(source.get("root") or root) / source["ann"]
    if is_pseudo_labels(read_coco(path)):
        raise ValueError(f"data.extra_train[{i}]: {path} holds pseudo-labels, whose unconfident pixels (iscrowd regions) "
                         f"would train as a real class under crowd: {crowd}; add crowd: ignore to that source, e.g. "
                         f"'data.extra_train=[{{ann:{source['ann']},crowd:ignore}}]'")
    return source
