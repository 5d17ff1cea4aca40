"""Which checkpoint a run continues: one rule a user can predict.

- `resume=PATH`: that checkpoint.
- `resume=auto` with a NAMED run folder (`hydra.run.dir=runs/X` on the command line, or a sweep
  job's folder under a `hydra.sweep.dir` given on it): that run. Continued from its
  `checkpoints/last.ckpt`; a folder still without a run starts one there. Never another run's
  folder: `hydra.run.dir=<new> resume=auto` once continued the newest run in its own folder.
- `resume=auto` without one: the newest run of the experiment under `runs_dir` on the same data
  (`data.root`) whose config this command continues (every difference is a key a resume applies,
  see resuming.changes); none: one line naming the candidates and how each differs. The newest run
  alone was once taken, and a distillation run was resumed for a command that never named it.
- no `resume`: a new run, unless this process is the SLURM job that trains a run, restarted by its
  scheduler (callbacks.run_folder.restarted_job): then that run, from its own folder (or, when Hydra made
  this restart a new time-stamped folder, the newest run of this job that the command continues).

A candidate's config is its config.yaml (what it started with) with the changes of its
resumes.yaml applied: where and how long it trains now.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_info

from trashseg.data.fold_record import RECORD_KEY
from trashseg.models.registry import DROPPED
from trashseg.run_layout import CONFIG_FILE, LAST, RESUMES_FILE, override_key, read_config, used

from ..callbacks.run_folder import restarted_job, scheduler_job
from ..summary import shown
from .changes import listed_changes, other_run_changes

SHOWN_CANDIDATES = 3


def named_run_folder() -> bool:
    """Whether the command line named this job's run folder: `hydra.run.dir`, or `hydra.sweep.dir`
    for a sweep's job (read from Hydra's record of the command's overrides). False outside Hydra."""
    if not HydraConfig.initialized():
        return False
    hydra = HydraConfig.get()
    key = "hydra.sweep.dir" if hydra.mode == RunMode.MULTIRUN else "hydra.run.dir"
    return any(override_key(o) == key for o in hydra.overrides.hydra)


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for name in parents:
        if not isinstance(cfg.get(name), dict):
            cfg[name] = {}
        cfg = cfg[name]
    cfg[key] = value


def current_config(run: Path) -> dict | None:
    """The run's config.yaml with its resumes.yaml changes applied in order; None without config.yaml."""
    if not (run / CONFIG_FILE).is_file():
        return None
    cfg = read_config(run)
    resumes = run / RESUMES_FILE
    for entry in (yaml.safe_load(resumes.read_text()) or [] if resumes.is_file() else []):
        for key, change in (entry.get("changed") or {}).items():
            _set(cfg, key, change["now"])
    return cfg


def _without_record(cfg: dict) -> dict:
    """Without what a run records at its start, never typed: its fold files and model.dropped."""
    cfg = {k: v for k, v in cfg.items() if k != RECORD_KEY}
    if isinstance(cfg.get("model"), dict):
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k != DROPPED}
    return cfg


def _newest_continued(candidates: list[Path], config: dict | None) -> tuple[Path | None, list[str]]:
    """The newest candidate last.ckpt whose run `config` continues, and how each newer one differs."""
    candidates = sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)
    if config is None:
        return (candidates[0] if candidates else None), []
    differences = []
    for ckpt in candidates:
        saved = current_config(ckpt.parent.parent)
        other = other_run_changes(_without_record(saved), _without_record(config)) if saved is not None else {}
        if not other:
            return ckpt, differences
        differences.append(f"{ckpt.parent.parent} ({listed_changes(other, 2)})")
    return None, differences


def _restarted_job_checkpoint(run_dir: Path | None, runs_dir: Path, experiment: str, config: dict | None,
                              named: bool) -> Path | None:
    """The last.ckpt of the run this process's SLURM job trained before its scheduler restarted it:
    its own folder's, or where Hydra made the restart a new time-stamped folder (no hydra.run.dir),
    the newest run of this job under runs_dir/experiment that the command continues. None for a
    process that is no such restart."""
    if run_dir is None:
        return None
    run = run_dir if restarted_job(run_dir) else None
    if run is None and not named and not used(run_dir) and (scheduler_job() or {}).get("restart_count"):
        ckpt = _newest_continued([c for c in (runs_dir / experiment).glob(f"*/{LAST}") if restarted_job(c.parent.parent)],
                                 config)[0]
        run = ckpt.parent.parent if ckpt is not None else None
    if run is None:
        return None
    job = scheduler_job()  # what restarted_job(run) found: this process's own job
    restart = f"SLURM job {job['slurm_job_id']} restarted (SLURM_RESTART_COUNT={job['restart_count']})"
    if (run / LAST).is_file():
        rank_zero_info(f"{restart}: continuing its run in {shown(run)} from {LAST}")
        return run / LAST
    rank_zero_info(f"{restart} before its run in {shown(run)} wrote {LAST}: starting that run over")
    return None


def find_resume_checkpoint(resume: str | None, runs_dir: Path, experiment: str, run_dir: Path | None = None,
                           config: dict | None = None, named: bool = False) -> Path | None:
    """`run_dir`: this command's run folder, `named`: given on the command line (named_run_folder);
    `config`: this command's resolved config, matched against each candidate's (None: the newest)."""
    if not resume:
        return _restarted_job_checkpoint(run_dir, runs_dir, experiment, config, named)
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path} (resume takes auto or a .ckpt path)")
        return path
    if run_dir is not None and (run_dir / LAST).is_file():
        return run_dir / LAST
    if named:
        if used(run_dir):
            raise FileExistsError(f"resume=auto: {run_dir} holds a run (metrics.csv or a checkpoint) but no {LAST} to "
                                  "continue it from; give a new hydra.run.dir to start a new run")
        rank_zero_info(f"resume=auto: {shown(run_dir)} holds no run yet: a new run starts there")
        return None
    candidates = list((runs_dir / experiment).glob(f"*/{LAST}"))
    if not candidates:
        raise FileNotFoundError(f"resume=auto: no earlier run of {experiment!r} with {LAST} under {runs_dir}")
    ckpt, differences = _newest_continued(candidates, config)
    if ckpt is not None:
        return ckpt
    more = f" and {len(differences) - SHOWN_CANDIDATES} more" if len(differences) > SHOWN_CANDIDATES else ""
    raise ValueError(  # a checkpoint would restore the settings that differ: none of them continues this command
        f"resume=auto: no run of {experiment!r} under {runs_dir} was started with this command's settings and data; "
        f"newest first: {'; '.join(differences[:SHOWN_CANDIDATES])}{more}; continue one with hydra.run.dir=<its folder> "
        "resume=auto (and its overrides), or leave resume out to start a new run")
