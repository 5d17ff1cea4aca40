"""How Lightning writes a run's checkpoints: atomically, and what best.ckpt and last.ckpt hold.

last.ckpt is Lightning's whole training state (what a resume reads); best.ckpt keeps only `KEPT`,
what scoring a run needs. Inference, export, OOF, ensembles, distillation teachers and the resume
checks read a checkpoint's `state_dict` and `hyper_parameters` (the run config: model, class list,
fold record), plus its `epoch` and `global_step`. The optimizer, scheduler, callback and loop states
are for resuming; in best.ckpt they only took disk: AdamW keeps two tensors per weight, so the file
was 3x the weights (UPerNet Swin-B: 1.44 GB instead of 0.48 per fold; docs/results/disk.md).

Lightning's default saves through an fsspec transaction whose local writer stages the bytes in
$TMPDIR and moves them without fsync: across file systems that move is a copy, and a kill during
it leaves a truncated `last.ckpt` that resume=auto would pick. Here the bytes go to a temporary
file beside the checkpoint, are fsynced and renamed over it (trashseg.atomic); loading goes
through trashseg.checkpoint.file, so a bad file is one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from trashseg.atomic import atomic_write

from .file import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(Path(path)) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)  # always weights-only: a checkpoint must never run code


KEPT = ("epoch", "global_step", "pytorch-lightning_version", "state_dict",
        L.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY, L.LightningModule.CHECKPOINT_HYPER_PARAMS_NAME,
        L.LightningModule.CHECKPOINT_HYPER_PARAMS_TYPE)


class BestWeightsCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose files keep only `KEPT`."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # The whole state is dumped first so that every callback's on_save_checkpoint runs: weight
        # averaging puts the averaged weights, the ones validation scored, into state_dict there.
        # Lightning's save_weights_only skips those hooks and would save the raw training weights.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.save_checkpoint({k: v for k, v in checkpoint.items() if k in KEPT}, filepath)
        trainer.strategy.barrier("BestWeightsCheckpoint")
        # what ModelCheckpoint._save_checkpoint does after writing
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
