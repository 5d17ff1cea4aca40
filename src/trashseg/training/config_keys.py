"""Unknown config keys are refused before any work starts, naming the key and the closest valid ones.

Two checks. `check_overrides` runs on the command line before Hydra applies it: Hydra refuses
`optimizer.lrr=1e-3` with a multi-line "Key 'lrr' is not in struct" and no hint. It composes the
config that the group choices on the command line select (every combination of a group sweep) and
names the unknown key with the closest existing ones. Additions (`+key`, `++key`), deletions
(`~key`) and `hydra.*` keys are left to Hydra; so is anything this cannot compose (a missing
experiment, a syntax error): Hydra's own message covers those, as it does for its own groups and
keys (`hydra/launcher=submitit_local`, `hydra.sweeper.n_trials=3`). An addition of a key the config
already has (`+trainer.max_time=...` since the trainer configs name it) is one line saying to drop
the `+`, instead of Hydra's "Could not append to config".

`check_config` runs on the composed config: it also catches typos inside experiment files and
`+key=value` additions, against what each part actually accepts.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig

# Options that point Hydra at another config: the check would compose the wrong one.
OTHER_CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
MAX_COMBINATIONS = 16  # a group sweep larger than this is not pre-checked (composition costs ~0.1 s)


def unknown_key_message(key: str, allowed: Iterable[str], where: str = "") -> str:
    """`unknown config key 'where+key'` with the closest valid keys (or all of them)."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=3)
    hint = (f"; did you mean {', '.join(where + c for c in close)}?" if close
            else f"; valid keys: {', '.join(allowed)}")
    return f"unknown config key '{where}{key}'{hint}"


def _is_hydras(override: Override) -> bool:
    """Hydra's own keys and groups (`hydra.sweeper.n_trials`, `hydra/launcher=submitit_local`): Hydra checks them."""
    return re.split(r"[./]", override.key_or_group)[0] == "hydra"


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def _missing(cfg: DictConfig, dotted: str) -> str | None:
    """The message for a dotted key that `cfg` does not have, or None if it has it (or cannot tell)."""
    node, parts = cfg, dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None  # a list index or a value: Hydra decides
        if part not in node:
            where = ".".join(parts[:depth]) + "." if depth else ""
            return unknown_key_message(part, node.keys(), where)
        node = node[part]
    return None


def check_overrides(args: list[str], config_dir: Path, config_name: str = "train") -> str | None:
    """One line naming the first override of a key the composed config lacks, or None."""
    if any(a.split("=")[0] in OTHER_CONFIG_FLAGS for a in args):
        return None
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except HydraException:
        return None
    groups = {p.name for p in config_dir.iterdir() if p.is_dir()}
    choices = [o for o in overrides if o.key_or_group in groups and o.type == OverrideType.CHANGE]
    # `+augment/copy_paste=rare` adds a group whose keys the value overrides may then set
    added = [f"+{o.key_or_group}={o.get_value_element_as_str()}" for o in overrides
             if o.type == OverrideType.ADD and (config_dir / o.key_or_group).is_dir() and not o.is_sweep_override()]
    values = [o for o in overrides if o.type == OverrideType.CHANGE and o.key_or_group not in groups
              and not _is_hydras(o)]
    additions = [o for o in overrides if o.type == OverrideType.ADD and not (config_dir / o.key_or_group).is_dir()
                 and not _is_hydras(o)]
    combinations = list(itertools.islice(
        itertools.product(*[[f"{o.key_or_group}={v}" for v in _values(o)] for o in choices]), MAX_COMBINATIONS + 1))
    if not (values or additions) or len(combinations) > MAX_COMBINATIONS:
        return None
    with initialize_config_dir(str(config_dir.resolve()), version_base="1.3"):
        for selection in combinations:
            try:
                cfg = compose(config_name, overrides=[*selection, *added])
            except HydraException:
                return None
            for override in values:
                message = _missing(cfg, override.key_or_group)
                if message:
                    chosen = f" with {' '.join(selection)}" if len(combinations) > 1 else ""
                    return message + f"{chosen} (to add a new key on purpose: +{override.input_line})"
            for override in additions:
                if _has(cfg, override.key_or_group):
                    return (f"config key '{override.key_or_group}' exists already, so it cannot be added: "
                            f"write {override.input_line.removeprefix('+')} (without the +)")
    return None


def _has(cfg: DictConfig, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node[part]
    return True


TOP_LEVEL = {"data", "augment", "model", "optimizer", "scheduler", "loss", "trainer", "logger", "experiment_name",
             "seed", "resume", "runs_dir", "paths", "averaging", "distill",
             "freeze_encoder_steps", "threads", "channels_last", "nonfinite_losses_in_a_row"}
OPTIMIZER = {"name", "lr", "weight_decay", "groups", "no_decay_norm_bias", "strict", "params", "layer_decay"}
SCHEDULER = {"name", "warmup_steps", "warmup_epochs", "power", "min_lr_ratio", "cycles", "gamma", "step_size_epochs",
             "milestones_epochs"}
LOSS = {"terms", "aux_weight"}
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
    # The parts that own the keys, imported here: train.py runs check_overrides before Hydra sets up
    # logging, and Lightning imported before that keeps a console of its own (a second copy of its lines).
    import lightning as L

    from trashseg.data.datamodule import AUGMENT_KEYS, TrashDataModule
    from trashseg.memory_format import wants_channels_last
    from trashseg.models.registry import MODELS

    from .callbacks.averaging import BUILDERS as AVERAGING

    _check(cfg, TOP_LEVEL, "")
    wants_channels_last(cfg.get("channels_last"), "cpu")  # a bad value: one line here, not once the Trainer runs
    _check(cfg["data"], _arguments(TrashDataModule.__init__), "data.")
    _check(cfg["augment"], set(AUGMENT_KEYS), "augment.")  # one list: the data module checks the same keys
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
