"""What a sweep (`python train.py -m ...`) shows: W&B names for its runs while they train, and the
summary its launching process prints when its last job ends.

Names: one W&B group per sweep, each run named by what the sweep varies. W&B's compare view lists
runs by name; named after their folders (`0`, `1`, ...) a fold sweep reads as numbers. Here a job
of `-m data.fold=0,1,2` is `data.fold=2` in the group of its sweep folder, an Optuna trial is named
by the values it sampled.

Summary: its folder and a table of its jobs (what each varied, best val mIoU, epoch, folder), then
the command for the best one. A Hydra callback (registered in configs/train.yaml under
hydra.callbacks), so it runs in the process that launched the sweep under every launcher and
sweeper (basic, submitit, Optuna); it reads the job folders from disk (trashseg.run_layout), as the
run summary does, so a failed job shows as one, with the reason it recorded (job_failure; a job
killed from outside: killed_jobs). A sweep
with failed jobs ends with their reasons, one `error: ...` line each, and exits 2; so does an Optuna
search that its failed trials stopped before its own summary (SearchEndsInTable). What the sweep
leaves that no tool reads goes: submitit's `%j` placeholder folder, and the whole sweep folder when
no job started (what was in it before the sweep stays).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trashseg.run_layout import (best_checkpoint, best_validation, failure_reason, last_checkpoint,
                                 recorded_overrides, sweep_jobs)

from ..summary import shown
from .job_failure import never_started, remove_empty_parents

log = logging.getLogger(__name__)

# hydra-optuna-sweeper's ends after its trials ran, when failed trials leave it nothing to summarise
# (optuna 2.10): every trial failed (Study.best_trial), or a grid search's last trial failed (the
# grid's Study.stop, which the sweeper lets pass only after a completed trial).
SEARCH_ENDS = ("No trials are completed yet", "`Study.stop` is supposed to be invoked inside an objective function")


def swept_keys(sweeper_params: dict | None, sweep_overrides: list[str]) -> list[str]:
    """Keys the sweep varies: the sweeper's `params` (Optuna's search space) and the command line's
    sweep overrides (`data.fold=0,1,2`, `optimizer.lr=range(...)`)."""
    keys = list(sweeper_params or {})
    try:
        parsed = OverridesParser.create().parse_overrides(sweep_overrides)
    except HydraException:
        parsed = []
    keys += [o.get_key_element() for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))


def job_name(keys: list[str], job_overrides: list[str]) -> str | None:
    """`key=value` of this job for each swept key, in the sweep's order."""
    values = {}
    for item in job_overrides:
        key, _, value = item.partition("=")
        values[key.lstrip("+~")] = value
    parts = [f"{k}={values[k]}" for k in keys if k in values]
    return " ".join(parts) or None


def sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) for this process's W&B run; (None, None) outside a Hydra sweep."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    sweep_dir = Path(str(hc.sweep.dir))
    master = sweep_dir / "multirun.yaml"  # written by the basic sweeper: the command line as typed
    typed = list(OmegaConf.load(master).hydra.overrides.task) if master.is_file() else []
    params = OmegaConf.to_container(hc.sweeper.params) if hc.sweeper.get("params") else None
    name = job_name(swept_keys(params, typed), list(hc.overrides.task))
    return str(sweep_dir), name or str(hc.job.num)


def sweep_table(jobs: list[Path], keys: list[str]) -> tuple[list[str], Path | None]:
    """Markdown rows, one per job, and the best job's best.ckpt (None when no job validated)."""
    rows = ["| job | varies | best val/mIoU | epoch | folder |", "|---|---|---|---|---|"]
    best: tuple[float, Path] | None = None
    for job in jobs:
        ckpt = best_checkpoint(job)
        if reason := failure_reason(job):
            score, epoch = f"failed: {reason}".replace("|", "\\|"), "-"
        elif (found := best_validation(job)) and ckpt.is_file():
            score, epoch = f"{found[0]:.4f}", str(found[1])
            if best is None or found[0] > best[0]:
                best = (found[0], ckpt)
        else:
            score, epoch = ("no validation" if last_checkpoint(job).is_file() else "failed"), "-"
        varies = job_name(keys, recorded_overrides(job) or []) or "-"
        rows.append(f"| {job.name} | {varies} | {score} | {epoch} | {shown(job)} |")
    return rows, best[1] if best else None


def summary_lines(sweep_dir: Path, jobs: list[Path], keys: list[str]) -> list[str]:
    rows, best = sweep_table(jobs, keys)
    lines = [f"sweep folder: {shown(sweep_dir)} ({len(rows) - 2} jobs)", *rows]
    if best is not None:
        lines.append(f"score the best job: python inference.py --checkpoint {shown(best)} --split val")
    if "data.fold" in keys:
        lines.append(f"OOF score of the folds: python -m trashseg.inference.oof {shown(sweep_dir)}")
    return lines


def failure_reasons(jobs: list[Path]) -> list[str]:
    """The failed jobs' reasons, each once, in job order."""
    return list(dict.fromkeys(r for job in jobs if (r := failure_reason(job))))


def remove_placeholder(submitit_folder: str | None) -> None:
    """submitit's launching process makes its folder pattern (`<sweep>/.submitit/%j`) with the `%j`
    unfilled; the jobs write into the filled-in ones, so that one stays empty."""
    if submitit_folder and "%" in submitit_folder:
        folder = Path(submitit_folder)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def entries(sweep_dir: Path) -> set[Path]:
    """What a folder holds two levels deep (job folders and their files, .submitit's job folders), resolved."""
    return {p.resolve() for p in (*sweep_dir.glob("*"), *sweep_dir.glob("*/*"))} if sweep_dir.is_dir() else set()


def remove_refused_sweep(sweep_dir: Path, before: set[Path], outside: Path, submitit_folder: str | None) -> None:
    """A sweep whose every job was refused before training leaves nothing behind: its job folders,
    multirun.yaml and submitit's job logs go (their reasons are printed), then the folders the sweep
    made up to `outside` (the nearest one that existed before it), when empty. Nothing that was in
    the sweep folder before the sweep is touched."""
    for job in sweep_jobs(sweep_dir):
        if job.resolve() not in before and never_started(job):
            shutil.rmtree(job)
    if (sweep_dir / "multirun.yaml").resolve() not in before:
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
    logs = Path(submitit_folder).parent if submitit_folder and "%" in submitit_folder else None
    if logs is not None and logs.is_dir() and sweep_dir.resolve() in logs.resolve().parents:
        for job_logs in logs.iterdir():  # SLURM arrays add symlinks and files beside the job folders
            if job_logs.resolve() in before:
                continue
            if job_logs.is_dir() and not job_logs.is_symlink():
                shutil.rmtree(job_logs)
            else:
                job_logs.unlink()
        if logs.resolve() not in before and not any(logs.iterdir()):
            logs.rmdir()
    if sweep_dir.resolve() != outside.resolve() and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
        sweep_dir.rmdir()
        remove_empty_parents(sweep_dir, outside)


def nearest_existing(path: Path) -> Path:
    path = path.resolve()
    return next(p for p in (path, *path.parents) if p.exists())


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.before: set[Path] | None = None  # what the sweep folder held before the sweep (None: not known)
        self.outside = Path.cwd()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.before, self.outside = entries(sweep_dir), nearest_existing(sweep_dir)  # never removed at the end

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        params = OmegaConf.to_container(hydra.sweeper.params) if hydra.sweeper.get("params") else None
        keys = swept_keys(params, list(hydra.overrides.task))
        sweep_dir = Path(str(hydra.sweep.dir))
        submitit_folder = str(hydra.launcher.submitit_folder) if hydra.launcher.get("submitit_folder") else None
        jobs = sweep_jobs(sweep_dir)
        lines = summary_lines(sweep_dir, jobs, keys)
        reasons = failure_reasons(jobs)
        remove_placeholder(submitit_folder)
        if jobs and all(never_started(job) and failure_reason(job) for job in jobs) and self.before is not None:
            remove_refused_sweep(sweep_dir, self.before, self.outside, submitit_folder)
            lines.append(f"no job started: the sweep left nothing in {shown(sweep_dir)}")
        print("\n".join(lines), flush=True)
        if reasons:  # the last lines of the sweep, as a single run's error would be
            print("\n".join(f"error: {reason}" for reason in reasons), file=sys.stderr, flush=True)
            sys.exit(2)


class SearchEndsInTable:
    """Mixin for hydra-optuna-sweeper's OptunaSweeper (hydra_plugins/trashseg_sweeps): a search that
    its failed trials stop in one of the sweeper's own errors (SEARCH_ENDS) ends as any sweep with
    failed jobs does, in SweepSummary's table, the jobs' `error:` lines and exit 2, instead of that
    error before the table with the reasons left in the job folders. Only then: any other error, or
    the same text with no failed job on record, is raised as before."""

    def sweep(self, arguments: list[str]) -> None:
        try:
            return super().sweep(arguments)
        except (ValueError, RuntimeError) as err:
            ended = next((end for end in SEARCH_ENDS if end in str(err)), None)
            if ended is None or not failure_reasons(sweep_jobs(Path(str(self.sweeper.config.hydra.sweep.dir)))):
                raise
            log.warning(f"the Optuna search ended on its failed trials ({ended}): no best trial and no "
                        "optimization_results.yaml; the table below holds every trial")
