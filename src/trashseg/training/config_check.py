"""Reject unknown config keys before any work starts, naming the key and the closest valid ones.

Command-line overrides of keys that do not exist are caught earlier (training.overrides); this
also catches typos inside experiment files and `+key=value` additions, against what each part
actually accepts."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import lightning as L

from trashseg.data.datamodule import AUGMENT_KEYS, TrashDataModule
from trashseg.memory_format import wants_channels_last
from trashseg.models.registry import MODELS
from trashseg.training.averaging import BUILDERS as AVERAGING
from trashseg.training.overrides import unknown_key_message

TOP_LEVEL = {"data", "augment", "model", "optimizer", "scheduler", "loss", "trainer", "logger", "experiment_name",
             "seed", "resume", "runs_dir", "paths", "averaging", "distill",
             "freeze_encoder_steps", "threads", "channels_last", "nonfinite_losses_in_a_row"}
OPTIMIZER = {"name", "lr", "weight_decay", "groups", "no_decay_norm_bias", "strict", "params", "layer_decay"}
SCHEDULER = {"name", "warmup_steps", "warmup_epochs", "power", "min_lr_ratio", "cycles", "gamma", "step_size_epochs",
             "milestones_epochs"}
LOSS = {"terms", "aux_weight"}
AUGMENT = set(AUGMENT_KEYS)  # one list: the data module checks the same keys
LOGGER = {"csv", "wandb"}
WANDB = {"enabled", "offline", "project", "entity", "group", "tags", "name", "overlays"}


class ConfigError(ValueError):
    """A config key that nothing reads."""


def _arguments(fn, skip=("self", "num_classes", "augment")) -> set[str]:
    return {p for p in inspect.signature(fn).parameters if p not in skip}


def _check(section: Mapping, allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(unknown_key_message(key, allowed, where))


def check_config(cfg: Mapping) -> None:
    _check(cfg, TOP_LEVEL, "")
    wants_channels_last(cfg.get("channels_last"), "cpu")  # a bad value: one line here, not once the Trainer runs
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
    averaging = cfg.get("averaging")
    if averaging:
        if averaging.get("name") not in AVERAGING:
            raise ConfigError(f"unknown averaging '{averaging.get('name')}'; known: {', '.join(sorted(AVERAGING))}")
        _check(averaging, _arguments(AVERAGING[averaging["name"]]) | {"name"}, "averaging.")
