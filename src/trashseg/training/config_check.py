"""Reject unknown config keys before any work starts, naming the key and the closest valid ones.

Hydra already refuses overrides of keys that do not exist; this also catches typos inside
experiment files and `+key=value` additions, against what each part actually accepts."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping

import lightning as L

from trashseg.data.datamodule import TrashDataModule
from trashseg.models.registry import MODELS

TOP_LEVEL = {"data", "augment", "model", "optimizer", "scheduler", "loss", "trainer", "logger", "experiment_name",
             "seed", "resume", "runs_dir", "paths"}
OPTIMIZER = {"name", "lr", "weight_decay", "groups", "no_decay_norm_bias", "strict", "params"}
SCHEDULER = {"name", "warmup_steps", "warmup_epochs", "power", "min_lr_ratio", "cycles", "gamma", "step_size_epochs",
             "milestones_epochs"}
LOSS = {"terms", "aux_weight"}
AUGMENT = {"train", "val", "test"}
LOGGER = {"csv", "wandb"}
WANDB = {"enabled", "offline", "project", "entity", "group", "tags", "name", "overlays"}


class ConfigError(ValueError):
    """A config key that nothing reads."""


def _arguments(fn, skip=("self", "num_classes", "augment")) -> set[str]:
    return {p for p in inspect.signature(fn).parameters if p not in skip}


def _check(section: Mapping, allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=3)
            hint = f"; did you mean {', '.join(f'{where}{c}' for c in close)}?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")


def check_config(cfg: Mapping) -> None:
    _check(cfg, TOP_LEVEL, "")
    _check(cfg["data"], _arguments(TrashDataModule.__init__), "data.")
    _check(cfg["augment"], AUGMENT, "augment.")
    model = cfg["model"]
    if model.get("name") not in MODELS:
        raise ConfigError(f"unknown model '{model.get('name')}'; known: {', '.join(sorted(MODELS))}")
    _check(model, _arguments(MODELS[model["name"]]) | {"name"}, "model.")
    _check(cfg["optimizer"], OPTIMIZER, "optimizer.")
    _check(cfg["scheduler"], SCHEDULER, "scheduler.")
    _check(cfg["loss"], LOSS, "loss.")
    _check(cfg["trainer"], _arguments(L.Trainer.__init__) - {"logger", "callbacks", "plugins", "default_root_dir"}, "trainer.")
    _check(cfg["logger"], LOGGER, "logger.")
    _check(cfg["logger"]["wandb"], WANDB, "logger.wandb.")
