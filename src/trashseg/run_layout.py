"""What a run folder and a sweep are on disk, and where a run keeps its files. Every module that
reads or writes a run folder asks here; it imports nothing of ours.

    <run>/config.yaml            the resolved config the run started with (resumes.yaml: what resumes changed)
    <run>/metrics.csv            one row per logged step and validation (training.callbacks.history writes it)
    <run>/checkpoints/best.ckpt  the weights that scored best on val/mIoU (what scoring reads)
    <run>/checkpoints/last.ckpt  the whole training state, written at every validation (what a resume reads)
    <sweep>/<job>/               one folder per job of `train.py -m`, in job order (0, 1, ..., 10),
                                 each Hydra's (.hydra/overrides.yaml) and a run, or failed.txt

A run folder is a folder with config.yaml or checkpoints/ (`is_run`); it holds a run once it has
metrics.csv or a checkpoint (`used`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

CONFIG_FILE = "config.yaml"
RESUMES_FILE = "resumes.yaml"
METRICS_FILE = "metrics.csv"
CHECKPOINTS = "checkpoints"
BEST = Path(CHECKPOINTS) / "best.ckpt"
LAST = Path(CHECKPOINTS) / "last.ckpt"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"  # Hydra's record of the overrides a run or job was started with
HYDRA_FILES = frozenset({".hydra", "train.log"})  # what Hydra writes into a job folder before train() runs
FAILED_FILE = "failed.txt"  # a sweep job's one-line reason it stopped on an error a user can fix (training.launching.job_failure)
MAIN_METRIC = "val/mIoU"


def best_checkpoint(run: Path) -> Path:
    return Path(run) / BEST


def last_checkpoint(run: Path) -> Path:
    return Path(run) / LAST


def is_run(folder: Path) -> bool:
    """Whether `folder` is a run folder: it has config.yaml (written when the run starts) or checkpoints/."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() or (folder / CHECKPOINTS).is_dir()


def used(run: Path) -> bool:
    """Whether `run` already holds a run (its config.yaml alone does not count)."""
    run = Path(run)
    return (run / METRICS_FILE).exists() or any((run / CHECKPOINTS).glob("*.ckpt"))


def read_config(run: Path) -> dict:
    """A run folder's resolved config.yaml."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a trashseg run folder")
    return yaml.safe_load(path.read_text()) or {}


def flat_keys(cfg) -> dict:
    """A config as {dotted key: value}, the form W&B, compare and the resume check compare keys in."""
    return pd.json_normalize(dict(cfg), sep=".").iloc[0].to_dict() if cfg else {}


def job_order(folder: Path) -> list:
    """Sort key of a sweep's folders: numbers by value (job 10 after job 9)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(folder).name)]


def sweep_jobs(sweep: Path) -> list[Path]:
    """The job folders of a sweep (each holds Hydra's .hydra/overrides.yaml, or a failure record), in job order."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        return []
    jobs = (p for p in sweep.iterdir() if (p / OVERRIDES_FILE).is_file() or (p / FAILED_FILE).is_file())
    return sorted(jobs, key=job_order)


def recorded_overrides(folder: Path) -> list[str] | None:
    """The overrides the run or job in `folder` was started with (Hydra's record); None without one."""
    path = Path(folder) / OVERRIDES_FILE
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def override_key(override: str) -> str:
    """The config key an override sets: `data.fold` of `data.fold=0`, `+trainer.x=1` and `~key`."""
    return override.split("=", 1)[0].lstrip("+~")


def holds_only(folder: Path, names: frozenset[str]) -> bool:
    """Whether `folder` exists and holds nothing but entries named in `names`."""
    folder = Path(folder)
    return folder.is_dir() and all(p.name in names for p in folder.iterdir())


def failure_reason(folder: Path) -> str | None:
    """The one-line reason the sweep job in `folder` failed; None when it records no failure."""
    path = Path(folder) / FAILED_FILE
    return (path.read_text(encoding="utf-8").strip() or "failed") if path.is_file() else None


def read_metrics(run: Path) -> pd.DataFrame | None:
    """The run's metrics.csv; None when it has none yet."""
    path = Path(run) / METRICS_FILE
    return pd.read_csv(path) if path.is_file() else None


def best_row(metrics: pd.DataFrame | None) -> pd.Series | None:
    """The row of a metrics table with the best val/mIoU; None before any validation."""
    if metrics is None or MAIN_METRIC not in metrics:
        return None
    val = metrics.dropna(subset=[MAIN_METRIC])
    return None if val.empty else val.loc[val[MAIN_METRIC].idxmax()]


def best_validation(run: Path) -> tuple[float, int] | None:
    """(best val/mIoU, its epoch) from the run's metrics.csv; None before any validation."""
    row = best_row(read_metrics(run))
    return None if row is None else (float(row[MAIN_METRIC]), int(row["epoch"]))
