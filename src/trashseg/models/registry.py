"""One registry for every model family: `build_model(cfg, num_classes)`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a family builder `builder(num_classes, **params)` buildable as `name`."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(MODELS)


def _plain(cfg: Mapping) -> dict:
    try:  # an OmegaConf DictConfig, without importing OmegaConf here
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return dict(cfg)


def build_model(cfg: Mapping, num_classes: int) -> nn.Module:
    """The model a config names: `{name: <family>, ...its parameters}`."""
    params = _plain(cfg)
    name = params.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    builder = MODELS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"model {name!r} has no parameter {key!r}{hint}; valid: {', '.join(accepted)}")
    return builder(num_classes=num_classes, **params)
