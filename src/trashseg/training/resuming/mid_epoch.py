"""A train loader that resumes in the middle of an epoch.

Lightning saves a checkpoint after every validation, also mid-epoch (`val_check_interval < 1`,
a `max_time` stop). Resuming from one, a plain DataLoader starts its epoch over and Lightning
stops it early, so the batches already trained on are trained again and the rest of the epoch
never is. Here the loader's position (epoch, batches served) travels in the checkpoint and its
batch sampler skips those batches' indices on resume, without reading their images.

Lightning restores `state_dict`-capable loaders itself, but only when it builds the loader after
loading the checkpoint; `estimated_stepping_batches` (our schedule sizing) builds it before, so
that restore never happens. `ResumeMidEpoch` (a callback) carries the position instead.

The iterator is also created lazily, on the first batch: Lightning creates it before calling
`set_epoch` on the sampler when it resumes at an epoch boundary, and worker processes would
draw their first indices from the previous epoch's order.
"""

from __future__ import annotations

from itertools import islice

import lightning as L
from torch.utils.data import DataLoader, Sampler

from trashseg.data.datamodule import TrashDataModule


class SkipBatches(Sampler):
    """Yields the batches of `batch_sampler`, without the first `skip` of the next epoch."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler.sampler  # Lightning calls set_epoch on loader.batch_sampler.sampler
        self.skip = 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return islice(iter(self.batch_sampler), skip, None)


class ResumableDataLoader(DataLoader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = (-1, 0)  # (epoch, batches served in it)
        self._resume_at: tuple[int, int] | None = None

    def _epoch(self) -> int:
        return int(getattr(self.batch_sampler.sampler, "epoch", 0))

    def resume_at(self, epoch: int, served: int) -> None:
        """The next iteration, if it is of `epoch`, starts after its first `served` batches."""
        self._resume_at = (epoch, served)

    def __iter__(self):
        epoch = self._epoch()  # read on the first next(): after Lightning's set_epoch
        served = 0
        if self._resume_at is not None:
            resume_epoch, resume_served = self._resume_at
            self._resume_at = None
            if resume_epoch == epoch and 0 < resume_served < len(self):
                self.batch_sampler.skip = served = resume_served
        self.position = (epoch, served)
        for batch in super().__iter__():
            served += 1
            self.position = (epoch, served)
            yield batch


class ResumeMidEpoch(L.Callback):
    """Stores the train loader's position in each checkpoint and restores it on resume."""

    KEY = "train_loader_position"

    def __init__(self):
        self._restored: tuple[int, int] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, module, checkpoint: dict) -> None:
        if isinstance(trainer.train_dataloader, ResumableDataLoader):
            checkpoint[self.KEY] = list(trainer.train_dataloader.position)

    def on_load_checkpoint(self, trainer: L.Trainer, module, checkpoint: dict) -> None:
        self._restored = tuple(checkpoint.get(self.KEY) or ()) or None

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if self._restored and isinstance(trainer.train_dataloader, ResumableDataLoader):
            trainer.train_dataloader.resume_at(*self._restored)
        self._restored = None


def resumable(loader: DataLoader) -> ResumableDataLoader:
    """The same loader (dataset, batches, workers, collate), resumable mid-epoch."""
    return ResumableDataLoader(
        loader.dataset, batch_sampler=SkipBatches(loader.batch_sampler), num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
    )


class TrainingDataModule(TrashDataModule):
    """The data module, with a train loader that resumes mid-epoch."""

    def train_dataloader(self) -> ResumableDataLoader:
        return resumable(super().train_dataloader())
