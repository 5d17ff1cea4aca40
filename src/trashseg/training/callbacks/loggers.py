"""The run's loggers: metrics.csv (history) and W&B, its runs grouped and named by the sweep they belong to."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from trashseg.run_layout import flat_keys

from ..launching.sweeps import sweep_identity
from .history import MetricsHistory


def build_loggers(cfg: dict, run_dir: Path, wandb_id: str | None) -> list:
    loggers = [MetricsHistory(run_dir)] if cfg["logger"]["csv"] else []
    wb = cfg["logger"]["wandb"]
    if wb["enabled"]:
        sweep_group, sweep_name = sweep_identity()  # a sweep's runs: one group, named by what it varies
        flat = flat_keys(cfg)  # flat keys: W&B's run table filters on any
        loggers.append(WandbLogger(
            save_dir=str(run_dir), offline=wb["offline"], project=wb["project"], entity=wb["entity"],
            group=wb["group"] or sweep_group or cfg["experiment_name"],  # a user's group wins, then the sweep's
            tags=list(wb["tags"] or []), name=wb["name"] or sweep_name or run_dir.name,
            id=wandb_id, resume="allow" if wandb_id else None,
            config={k: (str(v) if isinstance(v, list) else v) for k, v in flat.items()},
        ))
    return loggers
