"""The record a sweep job leaves when it stops on an error a user can fix (a fold that does not
exist, a launcher setting the trainer refuses), or when it is killed from outside (scancel, an
out-of-memory kill, a lost node: killed_jobs records it): its one-line reason in `<job folder>/failed.txt`.

train.py writes it and returns instead of exiting, so the sweep goes on to its other jobs under
every launcher (a `sys.exit` inside a submitit job bypasses submitit's result file: the sweep waits
for a result that never comes). The sweep's table reads it back (run_layout.failure_reason), and the tools that
read run folders skip a folder that holds it and no run of its own. A single run stops with the
line instead and leaves no folder (train.py's remove_failed_start).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from trashseg.atomic import write_text
from trashseg.run_layout import FAILED_FILE, HYDRA_FILES, holds_only, override_key

from ..summary import shown

def record_failure(job_dir: Path, reason: str) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    write_text(job_dir / FAILED_FILE, reason + "\n")


def killed_reason(job_id: str, ended: str, job_dir: Path, overrides: list[str]) -> str:
    """How a killed job ended (`CANCELLED (sacct) without finishing`) and the command that continues
    it: resume=auto in its own folder, from its last.ckpt (a folder without one starts the run there)."""
    kept = [o for o in overrides if override_key(o) not in ("resume", "hydra.run.dir")]
    command = ["python", "train.py", *kept, "resume=auto", f"hydra.run.dir={shown(job_dir)}"]
    return f"job {job_id} ended {ended}: continue it with {shlex.join(command)}"


def clear_failure(job_dir: Path) -> None:
    """A job run again into the folder of one that failed starts with no failure on record."""
    (job_dir / FAILED_FILE).unlink(missing_ok=True)


def never_started(folder: Path) -> bool:
    """Whether `folder` holds nothing but Hydra's files and a failure record: a job refused before training."""
    return holds_only(folder, HYDRA_FILES | {FAILED_FILE})


def remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove `folder`'s parents while they are empty, up to (not including) `stop`."""
    stop = stop.resolve()
    for parent in folder.resolve().parents:
        if parent == stop or stop not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def remove_failed_start(run_dir: Path) -> None:
    """A start that failed before training leaves no run folder: Hydra's files go, and so do the
    parents it made for them (runs/<experiment>/) when nothing else is in them."""
    if not holds_only(run_dir, HYDRA_FILES):
        return
    shutil.rmtree(run_dir)
    remove_empty_parents(run_dir, Path.cwd())
