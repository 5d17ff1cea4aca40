"""One registry for every model family: `build_model(cfg, num_classes)`.

A run config's model section records the submodules its model is built without (`model.dropped`,
see `prune_unreached`): `record_dropped_modules` probes for them once, when a new run's config is
resolved; every build of that run (the training module, DDP ranks, resume, inference, a
distillation teacher, export) reads the record and never probes. A config without the record (a
run from before it existed) builds as that run was saved: nothing dropped."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .prune_unreached import drop_recorded

MODELS: dict[str, Callable[..., nn.Module]] = {}
# family -> its probe: a built model -> the model-relative names of the submodules that do not reach its output
PROBES: dict[str, Callable[[nn.Module], list[str]]] = {}

DROPPED = "dropped"  # model.dropped: the record, written at a run's start, never typed


def register(name: str, probe: Callable[[nn.Module], list[str]] | None = None
             ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a family builder `builder(num_classes, **params)` buildable as `name`; `probe`:
    what finds the submodules of its models that never reach the output (none: nothing is dropped)."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = builder
        if probe is not None:
            PROBES[name] = probe
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
    """The model a config names: `{name: <family>, ...its parameters}`, without the submodules its
    `dropped` record lists (no record: nothing dropped)."""
    params = _plain(cfg)
    dropped = params.pop(DROPPED, None) or []
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
    model = builder(num_classes=num_classes, **params)
    drop_recorded(model, dropped, f"model {name!r}")
    return model


def unreached_modules(cfg: Mapping, num_classes: int) -> list[str]:
    """The probe: the submodules (model-relative names) of the model `cfg` builds whose parameters
    never reach its output. Builds the model once, without weights (reachability does not depend on
    them) and outside `torch.inference_mode()`, whose tensors an autograd graph cannot hold."""
    params = _plain(cfg)
    params.pop(DROPPED, None)
    probe = PROBES.get(params.get("name"))
    if probe is None:
        return []
    with torch.inference_mode(False), torch.enable_grad():
        return probe(build_model({**params, "pretrained": None}, num_classes))


def with_dropped_record(cfg: Mapping, num_classes: int) -> dict:
    """`cfg` as a new run records it: with `dropped`, what the probe finds."""
    return {**_plain(cfg), DROPPED: unreached_modules(cfg, num_classes)}


def record_dropped_modules(run_config: dict, resumed_config: Mapping | None) -> None:
    """In place: the run config's `model.dropped`. A new run (`resumed_config` None) records what the
    probe finds; a resumed run keeps its own record, or none (a run from before the record was kept
    builds exactly as it was saved, every module in)."""
    model = run_config["model"]
    if resumed_config is None:
        model[DROPPED] = unreached_modules(model, len(run_config["data"]["classes"]))
    elif DROPPED in resumed_config["model"]:
        model[DROPPED] = list(resumed_config["model"][DROPPED])
    else:
        model.pop(DROPPED, None)
