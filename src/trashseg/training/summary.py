"""The last lines of a finished run: where its folder is, its best val mIoU, the command that
scores its best.ckpt, or a warning when it stopped before any validation (a `max_steps` or
`max_time` stop: last.ckpt only, no best.ckpt, no metrics.csv). Read from the run folder alone,
so the sweep summary reads its jobs the same way."""

from __future__ import annotations

from pathlib import Path

from trashseg.run_layout import best_checkpoint, best_validation, last_checkpoint


def shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it (runs/..., as the user typed)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_summary(run_dir: Path) -> list[str]:
    lines = [f"run folder: {shown(run_dir)}"]
    best, found = best_checkpoint(run_dir), best_validation(run_dir)
    if best.is_file():
        score = f"best val/mIoU {found[0]:.4f} at epoch {found[1]}" if found else "best checkpoint"
        lines += [f"{score}: {shown(best)}", f"score it: python inference.py --checkpoint {shown(best)} --split val"]
    elif last_checkpoint(run_dir).is_file():
        last = shown(last_checkpoint(run_dir))
        lines.append(f"warning: the run stopped (trainer.max_steps or trainer.max_time) before its first validation: "
                     f"{last} holds it, but there is no best.ckpt and no metrics.csv; continue it with the same command "
                     f"plus resume={last} and a later stop, or validate sooner (trainer.val_check_interval)")
    return lines


def finished_line(run_dir: Path, stop: str, step: int) -> str:
    """The one line of a resume that has nothing to train (`stop`: `trainer.max_epochs=2`, the key that
    ends the run there): said instead of run_summary, whose best val mIoU would read as a new result."""
    key = stop.split("=", 1)[0]
    return (f"{shown(run_dir)} is finished: its last.ckpt is at step {step}, where {stop} ends it, so nothing was "
            f"trained; to train it longer run the same command with a larger {key}, or start a new run in a new folder "
            "without resume=")
