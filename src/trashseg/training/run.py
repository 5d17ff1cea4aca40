"""Build data, model, module and trainer from a composed config, and fit.

A run folder holds `config.yaml` (resolved), `metrics.csv`, `checkpoints/{best,last}.ckpt`
and W&B's offline files. `resume: auto` continues the newest run of the same experiment,
`resume: PATH` a given checkpoint; the run then continues in that checkpoint's folder.
Every file is written atomically, by global rank 0 only; a kill at any point leaves a run
that `resume=auto` finishes as if it had never stopped.
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from trashseg.checkpoint_file import read_checkpoint, run_config
from trashseg.data.coco import read_coco
from trashseg.data.fold_record import RECORD_KEY, record_folds

from .averaging import build_averaging
from .checkpoint_io import AtomicCheckpointIO
from .config_check import check_config
from .encoder_warmup import FrozenEncoderWarmup
from .history import MetricsHistory
from .module import SegmentationModule
from .optim import check_sizable
from .resumable import ResumeMidEpoch, TrainingDataModule
from .resume_check import check_resume_config
from .run_folder import RunFolder, claimed, used
from .schedule_horizon import ScheduleHorizon
from .threads import size_threads
from .wandb_media import WandbMedia


def find_resume_checkpoint(resume: str | None, runs_dir: Path, experiment: str) -> Path | None:
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path} (resume takes auto or a .ckpt path)")
        return path
    # A folder Hydra has just made holds no checkpoint; one given with hydra.run.dir may, and is then the newest.
    candidates = list((runs_dir / experiment).glob("*/checkpoints/last.ckpt"))
    if not candidates:
        raise FileNotFoundError(f"resume=auto: no earlier run of {experiment!r} with checkpoints/last.ckpt under {runs_dir}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def plain_config(cfg: DictConfig) -> dict:
    """Resolved, with the data root absolute so a checkpoint works from any directory."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["data"]["root"] = str(Path(plain["data"]["root"]).resolve())
    return plain


def check_annotations(data: dict) -> None:
    """Train and val annotation files must hold annotations: a test split (or an emptied file)
    would train on all-background masks without a word."""
    for key in ("train_ann", "val_ann"):
        path = Path(data["root"]) / data[key]
        if path.is_file() and not read_coco(path).get("annotations"):
            raise ValueError(f"{path} (data.{key}) has no annotations, so every mask would be background; point "
                             f"data.{key} at an annotated file (test.json has none)")


def check_schedule(cfg: dict) -> None:
    """The schedule errors the Trainer's estimate would raise later, from the config alone."""
    trainer = cfg["trainer"]
    unbounded = trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) in (-1, None)
    check_sizable(cfg["scheduler"], float("inf") if unbounded else 1.0, 1.0)


def add_fold_record(plain: dict, saved: dict | None, ckpt: Path | None) -> None:
    """A fold run's config records its fold files (hash, image count; see data.fold_record). A
    resume keeps the record the run started with, and refuses fold files that changed since:
    the rest of the run would train on other images than its first part."""
    record = record_folds(plain["data"])
    if saved is not None:
        old = saved.get(RECORD_KEY)
        if old is None or record is None:  # a run started before records: it stays unverified
            record = old
        else:
            for side, entry in old.items():
                if entry["sha256"] != record[side]["sha256"]:
                    raise ValueError(
                        f"resuming {ckpt}: {Path(plain['data']['root']) / entry['file']} changed since the run started "
                        f"({entry['images']} images then, {record[side]['images']} now); restore the fold files it "
                        "started on, or start a new run without resume=")
    if record is not None:
        plain[RECORD_KEY] = record


def build_loggers(cfg: dict, run_dir: Path, wandb_id: str | None) -> list:
    loggers = [MetricsHistory(run_dir)] if cfg["logger"]["csv"] else []
    wb = cfg["logger"]["wandb"]
    if wb["enabled"]:
        flat = pd.json_normalize(cfg, sep=".").iloc[0].to_dict()  # flat keys: W&B's run table filters on any
        loggers.append(WandbLogger(
            save_dir=str(run_dir), offline=wb["offline"], project=wb["project"], entity=wb["entity"], group=wb["group"],
            tags=list(wb["tags"] or []), name=wb["name"] or run_dir.name, id=wandb_id, resume="allow" if wandb_id else None,
            config={k: (str(v) if isinstance(v, list) else v) for k, v in flat.items()},
        ))
    return loggers


warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")  # a resumed run's own
# Our train loader resumes mid-epoch (training.resumable), through a callback Lightning does not see.
warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")


@contextmanager
def process_flags_restored():
    """The Trainer sets process-wide torch flags (deterministic algorithms, cuDNN benchmark); give
    callers in the same process (tests, notebooks) back the ones they had."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Fit; returns the final logged metrics (floats)."""
    check_config(cfg)
    plain = plain_config(cfg)
    check_schedule(plain)
    size_threads(plain)  # torch threads and loader workers to this process's cores, before any worker starts
    averaging = build_averaging(plain.get("averaging"), plain["trainer"].get("max_epochs"))
    warmup = FrozenEncoderWarmup(plain["freeze_encoder_steps"]) if plain.get("freeze_encoder_steps") else None
    ckpt = find_resume_checkpoint(cfg.resume, Path(cfg.runs_dir), cfg.experiment_name)
    resume = None
    if ckpt is not None:
        # mmap: the small fields only; Lightning loads the tensors. A bad file is one line here.
        resumed = read_checkpoint(ckpt, mmap=True)
        add_fold_record(plain, run_config(resumed, ckpt), ckpt)
        changed = check_resume_config(run_config(resumed, ckpt), plain, str(ckpt))
        resume = {"checkpoint": str(ckpt), "epoch": resumed["epoch"], "global_step": resumed["global_step"],
                  "changed": changed, "wandb_run_id": resumed.get("wandb_run_id")}
        fresh, run_dir = run_dir, ckpt.parent.parent
        if fresh.exists() and fresh != run_dir and not any(p.name != ".hydra" for p in fresh.iterdir()):
            shutil.rmtree(fresh)  # the folder Hydra made for this invocation stays unused
    elif used(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); continue it with "
                              "resume=auto (or resume=PATH), or give a new hydra.run.dir")
    else:
        add_fold_record(plain, None, None)
    with claimed(run_dir):
        if resume is None and used(run_dir):  # a run that started and finished while this one set up
            raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); give a new hydra.run.dir")
        check_annotations(plain["data"])
        L.seed_everything(cfg.seed, workers=True)
        datamodule = TrainingDataModule(**plain["data"], augment=plain["augment"])
        module = SegmentationModule(plain)

        loggers = build_loggers(plain, run_dir, resume.pop("wandb_run_id") if resume else None)
        folder = run_dir / "checkpoints"
        best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val/mIoU", mode="max", enable_version_counter=False,
                               auto_insert_metric_name=False)
        # Not save_last: Lightning 2.6 rewrites that only when best.ckpt improves, so last.ckpt fell behind the run.
        # Without a monitor it is the latest state, written after every validation (mid-epoch ones too).
        last = ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False)
        callbacks = [best, last, ResumeMidEpoch(), RunFolder(run_dir, plain, resume),
                     ScheduleHorizon(plain["scheduler"]["name"]), WandbMedia()]
        callbacks += [lg for lg in loggers if isinstance(lg, MetricsHistory)]  # it flushes before each checkpoint
        callbacks += [averaging] if averaging else []  # validation and checkpoints see the averaged weights
        callbacks += [warmup] if warmup else []
        with process_flags_restored():
            trainer = L.Trainer(**plain["trainer"], default_root_dir=str(run_dir), logger=loggers or False,
                                callbacks=callbacks, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False)
            wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
            if wandb_loggers and trainer.is_global_zero:  # ranks are known once the Trainer exists
                module.wandb_run_id = wandb_loggers[0].experiment.id
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
