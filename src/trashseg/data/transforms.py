"""Albumentations pipelines from config: a list of `{name, params}` steps, where a step may
also be a container (`OneOf`, `SomeOf`, `Sequential`, `RandomOrder`, ...) holding its own
list under `transforms`, nested to any depth:

    - {name: OneOf, params: {p: 0.5}, transforms: [{name: ElasticTransform}, {name: GridDropout}]}

Label masks are never interpolated (nearest-neighbour everywhere, nested steps included), and
new mask pixels that a step invents (padding, rotation and affine borders, elastic borders)
are IGNORE_INDEX unless the step's YAML sets `fill_mask` itself: albumentations fills them
with 0, which would train and score them as Background.

Normalisation is not a step here: images stay uint8 until they reach the device
(`trashseg.data.normalize.Normalize`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence

import albumentations as A
import cv2

from .classes import IGNORE_INDEX


def _known(base: type) -> list[str]:
    return [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), base)]


def _transform_class(name: str, where: str) -> type:
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        close = difflib.get_close_matches(str(name), _known(A.BasicTransform) + _known(A.BaseCompose), n=3)
        raise ValueError(f"{where}: unknown albumentations transform {name!r}; did you mean {', '.join(close) or '...'}?")
    return cls


def _mask_fill_default(cls: type, params: dict) -> dict:
    """`fill_mask=IGNORE_INDEX` where the step would otherwise paint new mask pixels with a
    number (0 = Background). Steps whose default is None (the dropouts) leave the labels
    under their holes alone, so they keep that default."""
    parameter = inspect.signature(cls.__init__).parameters.get("fill_mask")
    if parameter is None or "fill_mask" in params or parameter.default is None:
        return params
    return {**params, "fill_mask": IGNORE_INDEX}


def build_step(step: Mapping, where: str) -> A.BasicTransform | A.BaseCompose:
    """One step (`where` names it in errors, e.g. `augment step 3 > transforms[1]`)."""
    if not isinstance(step, Mapping) or "name" not in step:
        raise ValueError(f"{where}: {step!r} must be a mapping with 'name' (and optional 'params', 'transforms')")
    cls = _transform_class(step["name"], where)
    is_container = issubclass(cls, A.BaseCompose)
    allowed = {"name", "params"} | ({"transforms"} if is_container else set())
    unknown = sorted(set(step) - allowed)
    if unknown:
        hint = "" if is_container else "; only containers (OneOf, SomeOf, Sequential, ...) take 'transforms'"
        raise ValueError(f"{where} ({step['name']}): unknown keys {unknown}; a step takes {sorted(allowed)}{hint}")
    params = dict(step.get("params") or {})
    if params.get("mask_interpolation", cv2.INTER_NEAREST) != cv2.INTER_NEAREST:
        raise ValueError(f"{where} ({step['name']}): masks are always resized nearest-neighbour; drop mask_interpolation")
    _check_params(cls, params, f"{where} ({step['name']})")
    if is_container:
        children = step.get("transforms")
        if not isinstance(children, Sequence) or isinstance(children, str) or not children:
            raise ValueError(f"{where} ({step['name']}): needs a non-empty list under 'transforms'")
        params["transforms"] = [build_step(child, f"{where} > transforms[{i}]") for i, child in enumerate(children)]
    else:
        params = _mask_fill_default(cls, params)
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} ({step['name']}): {_one_line(err)}") from None


def _check_params(cls: type, params: Mapping, where: str) -> None:
    """Albumentations only warns about an unknown argument and then ignores it: a typo
    (`limt: 90`) would silently train without the intended setting."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=3)
            raise ValueError(f"{where}: unknown parameter {key!r}; did you mean {', '.join(close) or '...'}? "
                             f"It takes {', '.join(sorted(accepted))}")


def _one_line(err: Exception) -> str:
    # albumentations re-raises pydantic's multi-line validation error as a ValueError from it
    cause = err.__cause__ or err.__context__
    if hasattr(cause, "errors"):
        reasons = dict.fromkeys(f"{e['loc'][0] if e['loc'] else 'value'}: {e['msg']}" for e in cause.errors())
        return "; ".join(reasons)
    return " ".join(str(err).split())


def build_transforms(steps: Sequence[Mapping] | None) -> A.Compose | None:
    """A Compose of the steps, or None for no steps (the loader then skips albumentations)."""
    if not steps:
        return None
    transforms = [build_step(step, f"augment step {i}") for i, step in enumerate(steps)]
    # Compose-level override, applied to nested steps too: label masks are never interpolated.
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST)
