"""What a sweep (`python train.py -m ...`) prints when its last job ends: its folder and a table
of its jobs (what each varied, best val mIoU, epoch, folder), then the command for the best one.

A Hydra callback (registered in configs/train.yaml under hydra.callbacks), so it runs in the
process that launched the sweep under every launcher and sweeper (basic, submitit, Optuna); it
reads the job folders from disk, as the run summary does, so a failed job shows as one.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .run_summary import best_validation, shown
from .sweep_names import job_name, swept_keys


def _job_order(job: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", job.name)]


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (each holds Hydra's .hydra/overrides.yaml), in job order."""
    if not sweep_dir.is_dir():
        return []
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()), key=_job_order)


def sweep_table(sweep_dir: Path, keys: list[str]) -> tuple[list[str], Path | None]:
    """Markdown rows, one per job, and the best job's best.ckpt (None when no job validated)."""
    rows = ["| job | varies | best val/mIoU | epoch | folder |", "|---|---|---|---|---|"]
    best: tuple[float, Path] | None = None
    for job in sweep_jobs(sweep_dir):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        found = best_validation(job)
        ckpt = job / "checkpoints" / "best.ckpt"
        if found and ckpt.is_file():
            score, epoch = f"{found[0]:.4f}", str(found[1])
            if best is None or found[0] > best[0]:
                best = (found[0], ckpt)
        else:
            score, epoch = ("no validation" if (job / "checkpoints" / "last.ckpt").is_file() else "failed"), "-"
        rows.append(f"| {job.name} | {job_name(keys, overrides) or '-'} | {score} | {epoch} | {shown(job)} |")
    return rows, best[1] if best else None


def summary_lines(sweep_dir: Path, keys: list[str]) -> list[str]:
    rows, best = sweep_table(sweep_dir, keys)
    lines = [f"sweep folder: {shown(sweep_dir)} ({len(rows) - 2} jobs)", *rows]
    if best is not None:
        lines.append(f"score the best job: python inference.py --checkpoint {shown(best)} --split val")
    if "data.fold" in keys:
        lines.append(f"OOF score of the folds: python -m trashseg.inference.oof {shown(sweep_dir)}")
    return lines


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        params = OmegaConf.to_container(hydra.sweeper.params) if hydra.sweeper.get("params") else None
        keys = swept_keys(params, list(hydra.overrides.task))
        print("\n".join(summary_lines(Path(str(hydra.sweep.dir)), keys)), flush=True)
