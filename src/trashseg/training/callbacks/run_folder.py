"""The run folder's own files, written by global rank 0 once the run is set up.

Written in on_fit_start, after the data sets are read, the model is built, the schedule is sized
and a checkpoint is restored, so a setup error leaves no file behind; on rank 0 only, so the
processes of a DDP run (on one machine or several sharing the folder) never race on a file.

Under SLURM it also records which scheduler job trains the run (`scheduler_job.yaml`), so that
the same job, restarted by its scheduler (requeue, preemption, node failure, submitit's timeout
resubmission), continues its own run without `resume=auto` in the command (restarted_job).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

try:
    import fcntl
except ImportError:  # Windows: no claim; the used() check alone
    fcntl = None

from trashseg.atomic import remove_temps_in, write_text
from trashseg.run_layout import CHECKPOINTS, CONFIG_FILE, RESUMES_FILE, last_checkpoint


JOB_FILE = "scheduler_job.yaml"


def scheduler_job() -> dict | None:
    """This process's SLURM job: its id as submitit names it (`<array job id>_<task id>` for a task of
    an array, as the submitit launcher submits a sweep; else SLURM_JOB_ID, which a requeue keeps),
    the cluster, and how many times SLURM restarted it (SLURM_RESTART_COUNT, set from the first
    requeue on). None outside SLURM."""
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return None
    array = env.get("SLURM_ARRAY_JOB_ID")
    return {"slurm_job_id": f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env["SLURM_JOB_ID"],
            "slurm_cluster": env.get("SLURM_CLUSTER_NAME"), "restart_count": int(env.get("SLURM_RESTART_COUNT") or 0)}


def restarted_job(run_dir: Path) -> dict | None:
    """This process's job record when it is the job that trains the run in `run_dir`, restarted by its
    scheduler since (the same job and cluster, a higher restart count); else None. Two commands of one
    allocation share the job id but not a restart, so the second never takes over the first's run."""
    me, path = scheduler_job(), run_dir / JOB_FILE
    if me is None or not path.is_file():
        return None
    recorded = yaml.safe_load(path.read_text()) or {}
    same_job = all(recorded.get(k) == me[k] for k in ("slurm_job_id", "slurm_cluster"))
    return me if same_job and int(recorded.get("restart_count") or 0) < me["restart_count"] else None


class RunFolderBusy(RuntimeError):
    """Another process is training into the same run folder."""


@contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` while this process trains into it. Two train.py started in
    the same second get the same `${now:...}` folder from Hydra; without the lock both pass the
    used() check and write into one folder (metrics.csv and checkpoints of two runs interleaved).
    The lock is the kernel's (flock): a killed process releases it. On rank 0 only: the other
    processes of a DDP run write nothing of their own there. Before the Trainer exists the rank comes
    from the environment: rank_zero_only reads RANK/LOCAL_RANK/SLURM_PROCID, but a node that Lightning
    launches by hand (NODE_RANK=1, docs/training.md "Several machines") has none of them."""
    if fcntl is None or rank_zero_only.rank != 0 or int(os.environ.get("NODE_RANK", 0)) != 0:
        yield
        return
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".train.lock"
    handle = open(lock, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunFolderBusy(f"{run_dir} is in use by another train.py (two runs started in the same second share "
                            "Hydra's time-stamped folder); give each run its own hydra.run.dir") from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a setup error leaves no folder behind


def continue_log_in(fresh: Path, run_dir: Path) -> None:
    """A resume continues `run_dir`, not the folder Hydra made for this command (`fresh`): the file
    logs opened in `fresh` (Hydra's train.log) go on at the end of the same files in `run_dir`, with
    what they hold so far, and `fresh` is removed (it held only Hydra's files)."""
    fresh, run_dir = fresh.resolve(), run_dir.resolve()
    if fresh == run_dir or not fresh.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in fresh.iterdir()):
        return  # the same folder, or one holding more than Hydra's files: left as it is
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == fresh:
            handler.acquire()
            try:
                handler.close()  # reopened on the next record, at its new place, for appending
                old = Path(handler.baseFilename)
                handler.baseFilename, handler.mode = str(run_dir / old.name), "a"
                if old.is_file():
                    with open(handler.baseFilename, "a", encoding=handler.encoding) as continued:
                        continued.write(old.read_text(encoding=handler.encoding))
            finally:
                handler.release()
    shutil.rmtree(fresh, ignore_errors=True)


class RunFolder(L.Callback):
    def __init__(self, run_dir: Path, config: dict, resume: dict | None = None):
        """`config`: written to config.yaml when the run starts (on a resume only if the folder has none;
        what a resume changed goes to resumes.yaml). `resume`: {checkpoint, epoch, global_step,
        changed: {key: (old, new)}} when resuming."""
        self.run_dir, self.config, self.resume = Path(run_dir), config, resume

    def on_fit_start(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        for folder in (self.run_dir, self.run_dir / CHECKPOINTS):
            remove_temps_in(folder)  # left by a process killed while writing
        config = self.run_dir / CONFIG_FILE
        if self.resume is None or not config.is_file():  # a resume keeps what the steps so far trained on
            write_text(config, yaml.safe_dump(self.config, sort_keys=False))
        job = scheduler_job()
        if job is not None:  # the job training the run now: the one its scheduler may restart
            write_text(self.run_dir / JOB_FILE, yaml.safe_dump(job, sort_keys=False))
        else:
            (self.run_dir / JOB_FILE).unlink(missing_ok=True)  # continued outside SLURM: no job of the past takes it over
        if self.resume and self.resume["changed"]:
            log = self.run_dir / RESUMES_FILE
            entries = yaml.safe_load(log.read_text()) or [] if log.is_file() else []
            changed = {k: {"was": a, "now": b} for k, (a, b) in self.resume["changed"].items()}
            entries.append({k: v for k, v in self.resume.items() if k != "changed"} | {"changed": changed})
            write_text(log, yaml.safe_dump(entries, sort_keys=False))
            rank_zero_info("resume applies " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in self.resume["changed"].items()))

    def on_exception(self, trainer: L.Trainer, module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            rank_zero_info(f"interrupted; {last_checkpoint(self.run_dir)} holds the last checkpoint: run the "
                           "same command with resume=auto to continue")
