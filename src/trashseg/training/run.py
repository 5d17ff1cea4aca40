"""`train(cfg, run_dir)`: the run config resolved once (run_config), then data, model, callbacks and
Trainer from it, and fit.

A run folder holds `config.yaml` (resolved), `metrics.csv`, `checkpoints/{best,last}.ckpt`
(trashseg.run_layout) and W&B's offline files. `resume: auto` continues the run in a named run
folder, else the newest run of the experiment this command continues (training.resuming.target),
`resume: PATH` a given checkpoint; the run then continues in that checkpoint's folder. It ends by
printing its folder, best val mIoU and the command that scores it (training.summary).
Every file is written atomically, by global rank 0 only; a kill at any point leaves a run
that `resume=auto` finishes as if it had never stopped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from trashseg.checkpoint.lightning_io import AtomicCheckpointIO, BestWeightsCheckpoint
from trashseg.run_layout import BEST, CHECKPOINTS, LAST, MAIN_METRIC, best_validation, used

from .callbacks.averaging import build_averaging
from .callbacks.history import MetricsHistory
from .callbacks.loggers import build_loggers
from .callbacks.run_folder import RunFolder, claimed, continue_log_in
from .callbacks.wandb_media import WandbMedia
from .module import SegmentationModule
from .optimization.encoder_warmup import FrozenEncoderWarmup
from .optimization.schedules import ScheduleHorizon
from .resuming.mid_epoch import ResumeMidEpoch
from .run_config import resolve_run_config
from .summary import finished_line, run_summary

warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")  # a resumed run's own
# Our train loader resumes mid-epoch (training.resuming.mid_epoch), through a callback Lightning does not see.
warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")


@contextmanager
def _process_flags_restored():
    """The Trainer sets process-wide torch flags (deterministic algorithms, cuDNN benchmark); give
    callers in the same process (tests, notebooks) back the ones they had."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]


def train(cfg: DictConfig, run_dir: Path, placement: Mapping | None = None) -> dict[str, float]:
    """Fit; returns the final logged metrics (floats). `placement`: the trainer keys the launcher set
    for this job (launching.jobs.prepare_job)."""
    run = resolve_run_config(cfg, run_dir, placement)
    plain = run.plain
    if run.checkpoint is not None:
        continue_log_in(run_dir, run.run_dir)  # the folder Hydra made for this command stays unused
        if run.finished:  # fitting would train no step: no new result to print
            rank_zero_info(finished_line(run.run_dir, run.finished, run.resume["global_step"]))
            found = best_validation(run.run_dir)
            return {"best/val/mIoU": found[0]} if found else {}  # the run's own value, for a sweeper
    run_dir = run.run_dir
    averaging = build_averaging(plain.get("averaging"), plain["trainer"].get("max_epochs"))
    warmup = FrozenEncoderWarmup(plain["freeze_encoder_steps"]) if plain.get("freeze_encoder_steps") else None
    with claimed(run_dir):
        if run.resume is None and used(run_dir) and not run.starting_over:  # a run that started and finished meanwhile
            raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); give a new hydra.run.dir")
        L.seed_everything(plain["seed"], workers=True)
        module = SegmentationModule(plain)

        loggers = build_loggers(plain, run_dir, run.wandb_run_id)
        folder = run_dir / CHECKPOINTS
        best = BestWeightsCheckpoint(dirpath=folder, filename=BEST.stem, monitor=MAIN_METRIC, mode="max",
                                     enable_version_counter=False, auto_insert_metric_name=False)
        # Not save_last: Lightning 2.6 rewrites that only when best.ckpt improves, so last.ckpt fell behind the run.
        # Without a monitor it is the latest state, written after every validation (mid-epoch ones too).
        last = ModelCheckpoint(dirpath=folder, filename=LAST.stem, enable_version_counter=False)
        callbacks = [best, last, ResumeMidEpoch(), RunFolder(run_dir, run.started or plain, run.resume),
                     ScheduleHorizon(plain["scheduler"]["name"]), WandbMedia()]
        callbacks += [lg for lg in loggers if isinstance(lg, MetricsHistory)]  # it flushes before each checkpoint
        callbacks += [averaging] if averaging else []  # validation and checkpoints see the averaged weights
        callbacks += [warmup] if warmup else []
        with _process_flags_restored():
            trainer = L.Trainer(**plain["trainer"], default_root_dir=str(run_dir), logger=loggers or False,
                                callbacks=callbacks, plugins=[AtomicCheckpointIO()], use_distributed_sampler=False)
            wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
            if wandb_loggers and trainer.is_global_zero:  # ranks are known once the Trainer exists
                module.wandb_run_id = wandb_loggers[0].experiment.id
            trainer.fit(module, datamodule=run.datamodule, ckpt_path=str(run.checkpoint) if run.checkpoint else None,
                        weights_only=True)
    if trainer.is_global_zero:
        for logger in wandb_loggers:
            logger.experiment.finish()  # W&B's closing lines ("wandb sync ...") before the summary, not after it
        for line in run_summary(run_dir):
            rank_zero_info(line)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if best.best_model_score is not None:  # what a sweeper maximises: the run's best, not its last, val/mIoU
        metrics["best/val/mIoU"] = float(best.best_model_score)
    return metrics
