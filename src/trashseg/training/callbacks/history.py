"""metrics.csv that no kill can lose: the run's whole history, rewritten atomically.

Lightning's CSVLogger deletes metrics.csv when it starts and rewrites it in place when a new
column appears, so a killed resume loses or truncates the history. Here the logger is also a
callback: before every checkpoint is written it flushes all rows to metrics.csv (temporary file,
fsync, rename) and stores in the checkpoint how many rows it holds. Resuming from that checkpoint
keeps exactly those first rows of the file, whatever the killed process wrote after them; the
resumed run's own rows follow. Mid-epoch checkpoints need nothing special: rows are cut where
the checkpoint was taken, not at an epoch boundary.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from trashseg.atomic import atomic_write
from trashseg.run_layout import METRICS_FILE



class MetricsHistory(Logger, L.Callback):
    """Pass it to the Trainer both as a logger and as a callback."""

    def __init__(self, run_dir: str | Path, flush_every_n_steps: int = 100):
        super().__init__()
        self.path = Path(run_dir) / METRICS_FILE
        self.flush_every_n_steps = flush_every_n_steps
        self.rows: list[dict[str, Any]] = []
        self.dirty = False  # rows that the file does not hold yet
        self.flushed_at_step = 0

    # -- Logger ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @property
    def log_dir(self) -> str:
        return str(self.path.parent)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The run folder's config.yaml holds the configuration."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = len(self.rows) if step is None else step
        self.rows.append(row)
        self.dirty = True
        if row["step"] - self.flushed_at_step >= self.flush_every_n_steps:
            self.flush()
            self.flushed_at_step = row["step"]

    def save(self) -> None:
        """Lightning calls this after every logged row; the whole file is rewritten in flush() instead:
        before every checkpoint, every `flush_every_n_steps` steps and at the end."""

    @rank_zero_only
    def flush(self) -> None:
        if not self.dirty:  # also: a run that failed before logging anything leaves no file
            return
        columns = sorted(set().union(*self.rows)) if self.rows else ["epoch", "step"]
        with atomic_write(self.path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        self.dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "success":
            self.flush()
            return
        try:  # the rows past the last checkpoint, for a look at what happened; resume drops them
            self.flush()
        except OSError:
            pass  # never hide the error that stopped the run behind this one

    # -- Callback: the checkpoint records how many rows precede it ------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.flush()  # before the checkpoint file is written: every row it claims is on disk

    def state_dict(self) -> dict[str, int]:
        return {"rows": len(self.rows)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._keep_first(int(state_dict["rows"]))

    @rank_zero_only
    def _keep_first(self, count: int) -> None:
        earlier = read_rows(self.path) if self.path.is_file() else []
        if len(earlier) < count:
            warnings.warn(f"{self.path} holds {len(earlier)} rows but the checkpoint follows {count}; "
                          "the missing earlier rows are lost", stacklevel=2)
        self.rows = earlier[:count]
        self.dirty = len(earlier) != len(self.rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv, with one clear line when the file is not one."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a readable metrics CSV ({err}); move it aside to resume with an empty "
                         "history, or restore it from a copy") from None
    if rows and not {"step", "epoch"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{path} has no step/epoch columns: not a trashseg metrics file; move it aside to resume "
                         "with an empty history")
    return [{k: v for k, v in row.items() if k is not None} for row in rows]
