"""The run config, resolved once: the composed Hydra config (and the checkpoint a resume continues)
turned into the plain dict a run trains from, with every check a user's config can fail run here,
before any run folder is made or written.

What resolution settles, in order: unknown keys; the accelerator; `trainer.precision: auto` (what
config.yaml and the checkpoints record); the lr schedule; the threads plan (torch threads and
`data.num_workers` for this process's cores); the launcher's placement of the job
(`trainer.devices`, from launching.jobs.prepare_job); the annotation files; the resume target and
what a resume may change; the fold record and the record of dropped modules. `train()` calls it
once and nothing edits the result afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.data.coco import read_coco
from trashseg.data.fold_record import RECORD_KEY, file_record, record_folds
from trashseg.data.synthetic import is_synthetic, synthetic_note
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
    its checkpoint's). `checkpoint`: the last.ckpt a resume continues; `resume`: {checkpoint,
    epoch, global_step, changed: {key: (old, new)}}, what resumes.yaml records; `started`: the
    config the resumed run started with; `finished`: for a resume with no step left to train, the
    key that ends it (`trainer.max_epochs=2`)."""

    plain: dict
    run_dir: Path
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


def resolve_run_config(cfg: DictConfig, run_dir: Path, placement: Mapping | None = None) -> RunConfig:
    """The run config of `cfg` for a run in `run_dir` (or the run a resume continues); `placement`:
    the trainer keys the launcher set for this job (launching.jobs.prepare_job). Every check runs
    here: a config a user can get wrong stops in one line before any run folder is touched."""
    check_config(cfg)
    plain = plain_config(cfg)
    plain["trainer"].update(placement or {})
    check_accelerator(plain["trainer"])
    plain["trainer"]["precision"] = resolve_precision(plain["trainer"])  # `auto`: what config.yaml and checkpoints record
    check_schedule(plain)
    size_threads(plain)  # torch threads and loader workers to this process's cores, before any worker starts
    # before any run folder: a missing annotation file (a wrong data.root) stops here in one line
    TrainingDataModule(**plain["data"], augment=plain["augment"]).check_annotation_files()
    check_annotations(plain["data"])
    ckpt = find_resume_checkpoint(cfg.resume, Path(cfg.runs_dir), cfg.experiment_name, run_dir, plain,
                                  named_run_folder())
    if ckpt is None:
        starting_over = restarted_job(run_dir) is not None  # a requeued job that had no last.ckpt yet
        if used(run_dir) and not starting_over:
            raise FileExistsError(f"{run_dir} already holds a run (metrics.csv or checkpoints); continue it with "
                                  "resume=auto (or resume=PATH), or give a new hydra.run.dir")
        add_fold_record(plain, None, None)
        record_dropped_modules(plain, None)  # model.dropped: the probe runs here, once per run
        return RunConfig(plain, run_dir, starting_over=starting_over)
    # mmap: the small fields only; Lightning loads the tensors. A bad file is one line here.
    resumed = read_checkpoint(ckpt, mmap=True)
    if "optimizer_states" not in resumed:
        raise ValueError(f"{ckpt} holds the weights only (a best.ckpt); resume from {ckpt.parent / LAST.name}, "
                         "which holds the whole training state")
    started = run_config(resumed, ckpt)  # config.yaml is written from it only where the folder has none
    add_fold_record(plain, started, ckpt)
    record_dropped_modules(plain, started)  # model.dropped: the run's own record, or none
    changed = check_resume_config(started, plain, str(ckpt))
    resume = {"checkpoint": str(ckpt), "epoch": resumed["epoch"], "global_step": resumed["global_step"],
              "changed": changed}
    return RunConfig(plain, ckpt.parent.parent, ckpt, resume, started, resumed.get("wandb_run_id"),
                     finished_by(resumed, plain["trainer"]))
