"""Which checkpoint `resume=` continues.

- `resume=PATH`: that checkpoint.
- `resume=auto` with a run folder that holds `checkpoints/last.ckpt` (`hydra.run.dir=runs/X`, or a
  sweep job's folder under a reused `hydra.sweep.dir`): that run.
- otherwise the newest run of the experiment under `runs_dir` whose config this command continues
  (every difference is a key a resume applies, see resume_check); none: one line naming the
  candidates and how each differs. The newest run alone was once taken, and a distillation run
  was resumed for a command that never named distillation.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from trashseg.data.fold_record import RECORD_KEY
from trashseg.models.registry import DROPPED

from .resume_check import listed_changes, refused_changes

SHOWN_CANDIDATES = 3


def _config(run: Path) -> dict | None:
    path = run / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _without_record(cfg: dict) -> dict:
    """Without what a run records at its start, never typed: its fold files and model.dropped."""
    cfg = {k: v for k, v in cfg.items() if k != RECORD_KEY}
    if isinstance(cfg.get("model"), dict):
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k != DROPPED}
    return cfg


def find_resume_checkpoint(resume: str | None, runs_dir: Path, experiment: str, run_dir: Path | None = None,
                           config: dict | None = None) -> Path | None:
    """`run_dir`: this command's run folder; `config`: its resolved config, matched against each
    candidate's config.yaml (None: the newest candidate)."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path} (resume takes auto or a .ckpt path)")
        return path
    if run_dir is not None and (run_dir / "checkpoints" / "last.ckpt").is_file():
        return run_dir / "checkpoints" / "last.ckpt"
    candidates = sorted((runs_dir / experiment).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime,
                        reverse=True)
    if not candidates:
        raise FileNotFoundError(f"resume=auto: no earlier run of {experiment!r} with checkpoints/last.ckpt under {runs_dir}")
    if config is None:
        return candidates[0]
    differences = []
    for ckpt in candidates:
        saved = _config(ckpt.parent.parent)
        refused = refused_changes(_without_record(saved), _without_record(config)) if saved is not None else {}
        if not refused:
            return ckpt
        differences.append(f"{ckpt.parent.parent} ({listed_changes(refused, 2)})")
    more = f" and {len(differences) - SHOWN_CANDIDATES} more" if len(differences) > SHOWN_CANDIDATES else ""
    raise ValueError(  # a checkpoint would restore the settings that differ: none of them continues this command
        f"resume=auto: no run of {experiment!r} under {runs_dir} was started with this command's settings; newest first: "
        f"{'; '.join(differences[:SHOWN_CANDIDATES])}{more}; continue one with hydra.run.dir=<its folder> resume=auto "
        "(and its overrides), or leave resume out to start a new run")
