"""best.ckpt holds what scoring a run needs, not what resuming it needs.

Inference, export, OOF, ensembles, distillation teachers and the resume checks read a checkpoint's
`state_dict` and `hyper_parameters` (the run config: model, class list, fold record), plus its
`epoch` and `global_step`. The optimizer, scheduler, callback and loop states are for resuming,
which reads last.ckpt; in best.ckpt they only took disk: AdamW keeps two tensors per weight, so
the file was 3x the weights (UPerNet Swin-B: 1.44 GB instead of 0.48 per fold; docs/results/disk.md).
"""

from __future__ import annotations

from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

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
