"""Build data, model, module and trainer from a composed config, and fit.

A run folder holds `config.yaml` (resolved), `metrics.csv`, `checkpoints/{best,last}.ckpt`
and W&B's offline files. `resume: auto` continues the newest run of the same experiment,
`resume: PATH` a given checkpoint; the run then continues in that checkpoint's folder.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from trashseg.data.datamodule import TrashDataModule

from .config_check import check_config
from .module import SegmentationModule
from .wandb_media import WandbMedia


def find_resume_checkpoint(resume: str | None, runs_dir: Path, experiment: str, current: Path) -> Path | None:
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path} (resume takes auto or a .ckpt path)")
        return path
    candidates = [p for p in (runs_dir / experiment).glob("*/checkpoints/last.ckpt") if p.parent.parent != current]
    if not candidates:
        raise FileNotFoundError(f"resume=auto: no earlier run of {experiment!r} with checkpoints/last.ckpt under {runs_dir}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def plain_config(cfg: DictConfig) -> dict:
    """Resolved, with the data root absolute so a checkpoint works from any directory."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["data"]["root"] = str(Path(plain["data"]["root"]).resolve())
    return plain


def write_yaml(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def keep_earlier_metrics(run_dir: Path, start: int | None):
    """Lightning's CSV logger starts metrics.csv afresh; on resume from epoch `start`, set the
    earlier rows aside and return a function that puts them back in front."""
    metrics = run_dir / "metrics.csv"
    if start is None or not metrics.is_file():
        return lambda: None
    earlier = pd.read_csv(metrics)
    earlier = earlier[earlier["epoch"] <= start]

    def restore() -> None:
        later = pd.read_csv(metrics) if metrics.is_file() else earlier.iloc[0:0]
        merged = pd.concat([earlier, later[later["epoch"] > start]], ignore_index=True)
        tmp = metrics.with_suffix(".tmp")
        merged.to_csv(tmp, index=False)
        os.replace(tmp, metrics)

    return restore


def build_loggers(cfg: dict, run_dir: Path, wandb_id: str | None) -> list:
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="")] if cfg["logger"]["csv"] else []
    wb = cfg["logger"]["wandb"]
    if wb["enabled"]:
        flat = pd.json_normalize(cfg, sep=".").iloc[0].to_dict()  # flat keys: W&B's run table filters on any
        loggers.append(WandbLogger(
            save_dir=str(run_dir), offline=wb["offline"], project=wb["project"], entity=wb["entity"], group=wb["group"],
            tags=list(wb["tags"] or []), name=wb["name"] or run_dir.name, id=wandb_id, resume="allow" if wandb_id else None,
            config={k: (str(v) if isinstance(v, list) else v) for k, v in flat.items()},
        ))
    return loggers


# The run folder already holds config.yaml when the CSV logger starts; resume is handled above.
warnings.filterwarnings("ignore", "Experiment logs directory .* exists and is not empty")


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Fit; returns the final logged metrics (floats)."""
    check_config(cfg)
    runs_dir = Path(cfg.runs_dir)
    ckpt = find_resume_checkpoint(cfg.resume, runs_dir, cfg.experiment_name, run_dir)
    if ckpt is not None:
        fresh, run_dir = run_dir, ckpt.parent.parent
        if fresh.exists() and fresh != run_dir and not any(p.name != ".hydra" for p in fresh.iterdir()):
            shutil.rmtree(fresh)  # the folder Hydra made for this invocation stays unused
    L.seed_everything(cfg.seed, workers=True)
    plain = plain_config(cfg)
    # Build first: a setup error (data, model options, offline weights) leaves no run folder content.
    datamodule = TrashDataModule(**plain["data"], augment=plain["augment"])
    module = SegmentationModule(plain)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", plain)

    # mmap: read the checkpoint's small fields without loading its tensors (Lightning loads them)
    resumed = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True) if ckpt else {}
    loggers = build_loggers(plain, run_dir, resumed.get("wandb_run_id"))
    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if wandb_loggers:
        module.wandb_run_id = wandb_loggers[0].experiment.id
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/mIoU", mode="max",
                                  save_last=True, enable_version_counter=False, auto_insert_metric_name=False)
    trainer = L.Trainer(**plain["trainer"], default_root_dir=str(run_dir), logger=loggers or False,
                        callbacks=[checkpoints, WandbMedia()], use_distributed_sampler=False)
    restore_metrics = keep_earlier_metrics(run_dir, resumed.get("epoch"))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    finally:
        restore_metrics()
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
