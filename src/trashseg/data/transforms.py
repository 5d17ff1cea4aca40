"""Albumentations pipelines from config: a list of `{name, params}` steps.

Normalisation is not a step here: images stay uint8 until they reach the device
(`trashseg.data.normalize.Normalize`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import albumentations as A
import cv2


def _transform_class(name: str):
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        known = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
        close = difflib.get_close_matches(name, known, n=3)
        raise ValueError(f"unknown albumentations transform {name!r}; did you mean {', '.join(close) or '...'}?")
    return cls


def build_transforms(steps: Sequence[Mapping] | None) -> A.Compose | None:
    """A Compose of the steps, or None for no steps (the loader then skips albumentations)."""
    if not steps:
        return None
    transforms = []
    for step in steps:
        unknown = set(step) - {"name", "params"}
        if "name" not in step or unknown:
            raise ValueError(f"augment step {dict(step)} must have exactly 'name' and optional 'params'")
        params = dict(step.get("params") or {})
        if params.get("mask_interpolation", cv2.INTER_NEAREST) != cv2.INTER_NEAREST:
            raise ValueError(f"{step['name']}: masks are always resized nearest-neighbour; drop mask_interpolation")
        try:
            transforms.append(_transform_class(step["name"])(**params))
        except TypeError as err:
            raise ValueError(f"augment step {step['name']}: {err}") from None
    # Compose-level override: label masks are never interpolated, whatever a step says.
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST)
