"""Weight averaging from config (`averaging: ema | swa`), on Lightning's `WeightAveraging` callbacks.

Lightning swaps the average in for validation, writes it as the checkpoint's `state_dict` (the
training weights go to `current_model_state`, the average's counter to `averaging_state`) and
restores both on resume: best.ckpt holds the averaged weights that inference loads, and a
resumed run continues the same average. On top of Lightning:
- until the first update the average IS the current model: Lightning would validate, and save
  as best.ckpt, the weights the run started from;
- the average lives on the training device unless `device` says otherwise (Lightning makes it
  in `setup`, before the model is moved, so on the CPU);
- EMA leaves out a step that GradScaler skipped (16-mixed): the model then is the previous
  step's over again (weights kept, buffers put back: training.callbacks.nonfinite), which would count twice;
- SWA averages the weights at the end of each epoch from `swa_epoch_start` on, and then
  recomputes the BatchNorm statistics for the averaged weights with a pass over training batches
  (`torch.optim.swa_utils.update_bn`): averaged weights need statistics of their own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from contextlib import contextmanager
from itertools import islice

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from torch import nn
from torch.optim.swa_utils import update_bn


class AverageFromFirstUpdate(WeightAveraging):
    """Lightning's callback, but the current model stands for the average until it has one."""

    _swapped = False

    def _averaged(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._device is None:
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = self._averaged()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaged():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" in checkpoint and not self._averaged():
            # Nothing averaged yet: the weights to evaluate are the current ones. On resume the
            # average's content does not matter, its first update copies the model.
            checkpoint["state_dict"] = checkpoint["current_model_state"]


class EMA(AverageFromFirstUpdate, EMAWeightAveraging):
    """Exponential moving average of the weights and buffers (BatchNorm statistics included),
    updated after every `update_every_n_steps`-th optimizer step from `update_starting_at_step` on:
    average = decay * average + (1 - decay) * weights; the first update copies the weights."""

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 device: str | None = None):
        if not 0 <= decay <= 1:
            raise ValueError(f"averaging.decay = {decay}: give a number in [0, 1] (0.999 is usual; closer to 1 averages longer)")
        if update_every_n_steps < 1:
            raise ValueError(f"averaging.update_every_n_steps = {update_every_n_steps}: give a whole number >= 1")
        super().__init__(device=device, decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step)
        self._module: L.LightningModule | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._module = pl_module

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # The skip is read (a host sync) only for a step that is due; the update syncs there anyway.
        skipped = getattr(self._module, "last_step_skipped", None)
        if not super().should_update(step_idx, epoch_idx):
            return False
        return step_idx is None or skipped is None or not skipped()


@contextmanager
def random_state_kept():
    """The torch, numpy and Python random states come back as they were: an extra pass over the
    training data draws no number that training would otherwise have drawn."""
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


class SWA(AverageFromFirstUpdate):
    """Stochastic weight averaging: the equal average of the weights at the end of each epoch from
    `swa_epoch_start` on (an int: that epoch, 1-based; a float in (0, 1]: that fraction of
    trainer.max_epochs, as Lightning's StochasticWeightAveraging reads it). After each update the
    averaged model's BatchNorm statistics are recomputed on `bn_batches` training batches (null:
    a whole epoch's worth), in train mode with a cumulative mean; buffers are not averaged."""

    def __init__(self, swa_epoch_start: int | float = 0.75, bn_batches: int | None = None, device: str | None = None):
        whole = isinstance(swa_epoch_start, int) and swa_epoch_start >= 1
        fraction = isinstance(swa_epoch_start, float) and 0 < swa_epoch_start <= 1
        if not (whole or fraction):
            raise ValueError(f"averaging.swa_epoch_start = {swa_epoch_start!r}: give an epoch (int >= 1) or a fraction "
                             "of trainer.max_epochs in (0, 1]")
        if bn_batches is not None and bn_batches < 1:
            raise ValueError(f"averaging.bn_batches = {bn_batches}: give a whole number >= 1, or null for a whole epoch")
        super().__init__(device=device, use_buffers=False)
        self.swa_epoch_start, self.bn_batches = swa_epoch_start, bn_batches
        self._first_epoch = 0  # 0-based, resolved when max_epochs is known
        self._steps_per_epoch = 1
        self._trainer: L.Trainer | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here the train loader is set up, so the epoch's length is known (also on resume).
        start = self.swa_epoch_start
        if isinstance(start, float):
            start = int(trainer.max_epochs * start)  # build_averaging refused an unbounded run
        self._first_epoch = max(start - 1, 0)
        batches = trainer.num_training_batches
        if math.isinf(batches):
            raise ValueError("averaging=swa averages at the end of each epoch, and an iterable train set has no "
                             "known epoch length; use averaging=ema")
        self._steps_per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        self._trainer = trainer

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # Decided at the epoch's last optimizer step, not at epoch end: Lightning validates (and
        # checkpoints) before on_train_epoch_end, which would leave each epoch's update out of both.
        if step_idx is None or self._trainer is None:
            return False
        ends_epoch = (step_idx + 1) % self._steps_per_epoch == 0
        return ends_epoch and self._trainer.current_epoch >= self._first_epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        updates = self._latest_update_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._latest_update_step != updates:
            self._recompute_batch_norm(trainer)

    def _recompute_batch_norm(self, trainer: L.Trainer) -> None:
        average = self._average_model.module
        norms = [m for m in average.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        loader = trainer.datamodule.train_dataloader()  # a loader of its own: training's keeps its position
        batches = islice(loader, self.bn_batches) if self.bn_batches else loader
        with random_state_kept():
            update_bn((batch["image"] for batch in batches), average, device=self._device)
        for norm in norms:  # under DDP each process saw its share: all use the mean
            for buffer in (norm.running_mean, norm.running_var):
                buffer.copy_(trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))


BUILDERS = {"ema": EMA, "swa": SWA}


def build_averaging(cfg: Mapping | None, max_epochs: int | None = None) -> WeightAveraging | None:
    """The callback `averaging` names (null: none); `max_epochs` is the trainer's."""
    if not cfg:
        return None
    params = dict(cfg)
    name = params.pop("name", None)
    if name not in BUILDERS:
        raise ValueError(f"averaging.name = {name!r}: choose {' or '.join(BUILDERS)} (averaging=ema / averaging=swa)")
    if isinstance(params.get("swa_epoch_start"), float) and max_epochs in (None, -1):
        raise ValueError(f"averaging.swa_epoch_start = {params['swa_epoch_start']} is a fraction of trainer.max_epochs, "
                         "which this run does not set; give the epoch to start at as a whole number")
    return BUILDERS[name](**params)
