"""The run config, resolved once: the composed Hydra config (and the checkpoint a resume continues)
turned into the plain dict a run trains from, with every check a user's config can fail run here,
before any run folder is made or written.

What resolution settles, in order: unknown keys; the accelerator; `trainer.precision: auto` (what
config.yaml and the checkpoints record); the lr schedule; the threads plan (torch threads and
`data.num_workers` for this process's cores); the launcher's placement of the job
(`trainer.devices`, from launching.jobs.prepare_job); the resume target; the data module and its
annotation files; the fold record; the record of dropped modules; what a resume may change.
`train()` calls it once and nothing edits the result afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from omegaconf import DictConfig, OmegaConf

from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.data.fold_record import RECORD_KEY, record_folds, resumed_record
from trashseg.models.registry import record_dropped_modules
from trashseg.precision import resolve_precision
from trashseg.run_layout import LAST, used

from .callbacks.run_folder import restarted_job
from .config_keys import check_config
from .launching.threads import size_threads
from .optimization.schedules import check_sizable
from .resuming.changes import check_resume_config, finished_by
from .resuming.mid_epoch import TrainingDataModule
from .resuming.target import find_resume_checkpoint, named_run_folder


@dataclass(frozen=True)
class RunConfig:
    """What a run trains from. `plain`: the resolved config (config.yaml, every checkpoint's
    hyper_parameters.cfg, and what every part reads). `run_dir`: the run folder (a resume's is
    its checkpoint's). `datamodule`: the data the run fits on, built from `plain` and checked.
    `checkpoint`: the last.ckpt a resume continues; `resume`: {checkpoint, epoch, global_step,
    changed: {key: (old, new)}}, what resumes.yaml records; `started`: the config the resumed run
    started with; `finished`: for a resume with no step left to train, the key that ends it
    (`trainer.max_epochs=2`)."""

    plain: dict
    run_dir: Path
    datamodule: TrainingDataModule
    checkpoint: Path | None = None
    resume: Mapping | None = None
    started: dict | None = None
    wandb_run_id: str | None = None
    finished: str | None = None
    starting_over: bool = False  # a SLURM job restarted before its run wrote last.ckpt: it starts that run again


def plain_config(cfg: DictConfig) -> dict:
    """Resolved, with the data root absolute so a checkpoint works from any directory. `data=synthetic`
    named on the command line generates the synthetic set wherever data.root points."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    data = plain["data"]
    if data.get("synthetic") and HydraConfig.initialized() and "data=synthetic" in HydraConfig.get().overrides.task:
        data["synthetic"]["root"] = data["root"]  # asked for by name: generated wherever data.root points
    data["root"] = str(Path(data["root"]).resolve())
    return plain


def check_accelerator(trainer: dict) -> None:
    """A GPU recipe (trainer=gpu, ddp) on a machine without one: one line naming trainer=cpu, before
    Lightning's "No supported gpu backend found!" traceback and before any run folder."""
    if str(trainer.get("accelerator")) in ("gpu", "cuda", "mps") and not (
            CUDAAccelerator.is_available() or MPSAccelerator.is_available()):
        raise ValueError(f"trainer.accelerator={trainer['accelerator']} (the recipe's trainer config) but this machine "
                         "has no GPU; add trainer=cpu to train on the CPU (32-bit, one process)")


def check_schedule(cfg: dict) -> None:
    """The schedule errors the Trainer's estimate would raise later, from the config alone."""
    trainer = cfg["trainer"]
    unbounded = trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) in (-1, None)
    check_sizable(cfg["scheduler"], float("inf") if unbounded else 1.0, 1.0)


def resolve_run_config(cfg: DictConfig, run_dir: Path, placement: Mapping | None = None) -> RunConfig:
    """The run config of `cfg` for a run in `run_dir` (or the run a resume continues); `placement`:
    the trainer keys the launcher set for this job (launching.jobs.prepare_job). Every check runs
    here: a config a user can get wrong stops in one line before any run folder is touched. The
    config goes one way, config -> data -> models: the data module is built and checked once (and
    handed on to fit), then the model's record of dropped modules."""
    check_config(cfg)
    plain = plain_config(cfg)
    plain["trainer"].update(placement or {})
    check_accelerator(plain["trainer"])
    plain["trainer"]["precision"] = resolve_precision(plain["trainer"])  # `auto`: what config.yaml and checkpoints record
    check_schedule(plain)
    size_threads(plain)  # torch threads and loader workers to this process's cores, before any worker starts
    ckpt = find_resume_checkpoint(cfg.resume, Path(cfg.runs_dir), cfg.experiment_name, run_dir, plain,
                                  named_run_folder())
    resumed = started = None
    starting_over = False
    if ckpt is None:
        starting_over = restarted_job(run_dir) is not None  # a requeued job that had no last.ckpt yet
        if used(run_dir) and not starting_over:
            raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); continue it with "
                                  "resume=auto (or resume=PATH), or give a new hydra.run.dir")
    else:
        # mmap: the small fields only; Lightning loads the tensors. A bad file is one line here.
        resumed = read_checkpoint(ckpt, mmap=True)
        if "optimizer_states" not in resumed:
            raise ValueError(f"{ckpt} holds the weights only (a best.ckpt); resume from {ckpt.parent / LAST.name}, "
                             "which holds the whole training state")
        started = run_config(resumed, ckpt)  # config.yaml is written from it only where the folder has none
    # before any run folder: a wrong data.root or an unannotated file stops here in one line
    datamodule = TrainingDataModule(**plain["data"], augment=plain["augment"])
    datamodule.check_annotation_files()
    record = record_folds(plain["data"])  # a fold run records the files it trains on (data.fold_record)
    if started is not None:
        record = resumed_record(record, started.get(RECORD_KEY), plain["data"]["root"], ckpt)
    if record is not None:
        plain[RECORD_KEY] = record
    record_dropped_modules(plain, started)  # model.dropped: the run's own record on a resume; else the probe, once
    if ckpt is None:
        return RunConfig(plain, run_dir, datamodule, starting_over=starting_over)
    changed = check_resume_config(started, plain, str(ckpt))
    resume = {"checkpoint": str(ckpt), "epoch": resumed["epoch"], "global_step": resumed["global_step"],
              "changed": changed}
    return RunConfig(plain, ckpt.parent.parent, datamodule, ckpt, resume, started, resumed.get("wandb_run_id"),
                     finished_by(resumed, plain["trainer"]))
