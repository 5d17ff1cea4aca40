"""Build data, model, module and trainer from a composed config, and fit.

A run folder holds `config.yaml` (resolved), `metrics.csv`, `checkpoints/{best,last}.ckpt`
and W&B's offline files. `resume: auto` continues the run in a named run folder, else the newest
run of the experiment this command continues (training.resuming.target), `resume: PATH` a given
checkpoint; the run then continues in that checkpoint's folder. It ends by printing its folder,
best val mIoU and the command that scores it (training.summary).
Every file is written atomically, by global rank 0 only; a kill at any point leaves a run
that `resume=auto` finishes as if it had never stopped.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.checkpoint.lightning_io import AtomicCheckpointIO, BestWeightsCheckpoint
from trashseg.data.coco import read_coco
from trashseg.data.fold_record import RECORD_KEY, file_record, record_folds
from trashseg.data.synthetic import is_synthetic, synthetic_note
from trashseg.models.registry import record_dropped_modules
from trashseg.precision import resolve_precision
from trashseg.run_layout import BEST, CHECKPOINTS, LAST, best_validation, used

from .callbacks.averaging import build_averaging
from .callbacks.history import MetricsHistory
from .callbacks.run_folder import RunFolder, claimed, continue_log_in, restarted_job
from .callbacks.wandb_media import WandbMedia
from .config_keys import check_config
from .launching.sweeps import sweep_identity
from .launching.threads import size_threads
from .module import SegmentationModule
from .optimization.encoder_warmup import FrozenEncoderWarmup
from .optimization.schedules import ScheduleHorizon, check_sizable
from .resuming.changes import check_resume_config, finished_by
from .resuming.mid_epoch import ResumeMidEpoch, TrainingDataModule
from .resuming.target import find_resume_checkpoint, named_run_folder
from .summary import finished_line, run_summary


def check_accelerator(trainer: dict) -> None:
    """A GPU recipe (trainer=gpu, ddp) on a machine without one: one line naming trainer=cpu, before
    Lightning's "No supported gpu backend found!" traceback and before any run folder."""
    if str(trainer.get("accelerator")) in ("gpu", "cuda", "mps") and not (
            CUDAAccelerator.is_available() or MPSAccelerator.is_available()):
        raise ValueError(f"trainer.accelerator={trainer['accelerator']} (the recipe's trainer config) but this machine "
                         "has no GPU; add trainer=cpu to train on the CPU (32-bit, one process)")


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
        if not path.is_file():
            continue
        coco = read_coco(path)
        if not coco.get("annotations"):
            raise ValueError(f"{path} (data.{key}) has no annotations, so every mask would be background; point "
                             f"data.{key} at an annotated file (test.json has none)")
        if key == "train_ann" and is_synthetic(coco):
            rank_zero_info(synthetic_note(path))


def check_schedule(cfg: dict) -> None:
    """The schedule errors the Trainer's estimate would raise later, from the config alone."""
    trainer = cfg["trainer"]
    unbounded = trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) in (-1, None)
    check_sizable(cfg["scheduler"], float("inf") if unbounded else 1.0, 1.0)


def _recorded_files(record: dict) -> list[tuple[str, dict]]:
    """(name, {file, sha256, images}) of each file in a fold record: train, val, extra_train[i]."""
    files = [(side, record[side]) for side in ("train", "val") if side in record]
    return files + [(f"extra_train[{i}]", entry) for i, entry in enumerate(record.get("extra_train", []))]


def add_fold_record(plain: dict, saved: dict | None, ckpt: Path | None) -> None:
    """A fold run's config records its fold files and extra training sources (hash, image count;
    see data.fold_record). A resume keeps the record the run started with, and refuses files that
    changed since: the rest of the run would train on other images than its first part."""
    record = record_folds(plain["data"])
    extra = plain["data"].get("extra_train") or []
    if record is not None and extra:  # e.g. a pseudo-label round: the images it adds to the fold's
        record["extra_train"] = [file_record(source.get("root") or plain["data"]["root"], source["ann"]) for source in extra]
    if saved is not None:
        old = saved.get(RECORD_KEY)
        if old is None or record is None:  # a run started before records: it stays unverified
            record = old
        else:
            now = dict(_recorded_files(record))
            for name, entry in _recorded_files(old):
                if name in now and entry["sha256"] != now[name]["sha256"]:
                    raise ValueError(
                        f"resuming {ckpt}: {Path(plain['data']['root']) / entry['file']} changed since the run started "
                        f"({entry['images']} images then, {now[name]['images']} now); restore the "
                        f"{'fold files' if name in ('train', 'val') else 'file'} it started on, or start a new run without "
                        "resume=")
    if record is not None:
        plain[RECORD_KEY] = record


def build_loggers(cfg: dict, run_dir: Path, wandb_id: str | None) -> list:
    loggers = [MetricsHistory(run_dir)] if cfg["logger"]["csv"] else []
    wb = cfg["logger"]["wandb"]
    if wb["enabled"]:
        sweep_group, sweep_name = sweep_identity()  # a sweep's runs: one group, named by what it varies
        flat = pd.json_normalize(cfg, sep=".").iloc[0].to_dict()  # flat keys: W&B's run table filters on any
        loggers.append(WandbLogger(
            save_dir=str(run_dir), offline=wb["offline"], project=wb["project"], entity=wb["entity"],
            group=wb["group"] or sweep_group or cfg["experiment_name"],  # a user's group wins, then the sweep's
            tags=list(wb["tags"] or []), name=wb["name"] or sweep_name or run_dir.name,
            id=wandb_id, resume="allow" if wandb_id else None,
            config={k: (str(v) if isinstance(v, list) else v) for k, v in flat.items()},
        ))
    return loggers


warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")  # a resumed run's own
# Our train loader resumes mid-epoch (training.resuming.mid_epoch), through a callback Lightning does not see.
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
    check_accelerator(plain["trainer"])
    plain["trainer"]["precision"] = resolve_precision(plain["trainer"])  # `auto`: what config.yaml and checkpoints record
    check_schedule(plain)
    size_threads(plain)  # torch threads and loader workers to this process's cores, before any worker starts
    # before any run folder: a missing annotation file (a wrong data.root) stops here in one line
    datamodule = TrainingDataModule(**plain["data"], augment=plain["augment"])
    datamodule.check_annotation_files()
    check_annotations(plain["data"])
    averaging = build_averaging(plain.get("averaging"), plain["trainer"].get("max_epochs"))
    warmup = FrozenEncoderWarmup(plain["freeze_encoder_steps"]) if plain.get("freeze_encoder_steps") else None
    ckpt = find_resume_checkpoint(cfg.resume, Path(cfg.runs_dir), cfg.experiment_name, run_dir, plain,
                                  named_run_folder())
    resume = started = None
    starting_over = ckpt is None and restarted_job(run_dir) is not None  # a requeued job that had no last.ckpt yet
    if ckpt is not None:
        # mmap: the small fields only; Lightning loads the tensors. A bad file is one line here.
        resumed = read_checkpoint(ckpt, mmap=True)
        if "optimizer_states" not in resumed:
            raise ValueError(f"{ckpt} holds the weights only (a best.ckpt); resume from {ckpt.parent / LAST.name}, "
                             "which holds the whole training state")
        started = run_config(resumed, ckpt)  # config.yaml is written from it only where the folder has none
        add_fold_record(plain, started, ckpt)
        record_dropped_modules(plain, started)  # model.dropped: the run's own record, or none
        changed = check_resume_config(started, plain, str(ckpt))
        fresh, run_dir = run_dir, ckpt.parent.parent
        continue_log_in(fresh, run_dir)  # the folder Hydra made for this command stays unused
        if stop := finished_by(resumed, plain["trainer"]):  # fitting would train no step: no new result to print
            rank_zero_info(finished_line(run_dir, stop, resumed["global_step"]))
            found = best_validation(run_dir)
            return {"best/val/mIoU": found[0]} if found else {}  # the run's own value, for a sweeper
        resume = {"checkpoint": str(ckpt), "epoch": resumed["epoch"], "global_step": resumed["global_step"],
                  "changed": changed, "wandb_run_id": resumed.get("wandb_run_id")}
    elif used(run_dir) and not starting_over:
        raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); continue it with "
                              "resume=auto (or resume=PATH), or give a new hydra.run.dir")
    else:
        add_fold_record(plain, None, None)
        record_dropped_modules(plain, None)  # model.dropped: the probe runs here, once per run
    with claimed(run_dir):
        if resume is None and used(run_dir) and not starting_over:  # a run that started and finished while this one set up
            raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); give a new hydra.run.dir")
        L.seed_everything(cfg.seed, workers=True)
        module = SegmentationModule(plain)

        loggers = build_loggers(plain, run_dir, resume.pop("wandb_run_id") if resume else None)
        folder = run_dir / CHECKPOINTS
        best = BestWeightsCheckpoint(dirpath=folder, filename=BEST.stem, monitor="val/mIoU", mode="max", enable_version_counter=False,
                               auto_insert_metric_name=False)
        # Not save_last: Lightning 2.6 rewrites that only when best.ckpt improves, so last.ckpt fell behind the run.
        # Without a monitor it is the latest state, written after every validation (mid-epoch ones too).
        last = ModelCheckpoint(dirpath=folder, filename=LAST.stem, enable_version_counter=False)
        callbacks = [best, last, ResumeMidEpoch(), RunFolder(run_dir, started or plain, resume),
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
    if trainer.is_global_zero:
        for logger in wandb_loggers:
            logger.experiment.finish()  # W&B's closing lines ("wandb sync ...") before the summary, not after it
        for line in run_summary(run_dir):
            rank_zero_info(line)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if best.best_model_score is not None:  # what a sweeper maximises: the run's best, not its last, val/mIoU
        metrics["best/val/mIoU"] = float(best.best_model_score)
    return metrics
