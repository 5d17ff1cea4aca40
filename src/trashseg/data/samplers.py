"""Samplers. Training samplers: each yields (index, augmentation seed) keys, the seed a function of
(seed, epoch, index) only, so order and augmentations do not depend on the number of DataLoader
workers and a resumed run sees exactly the batches of an uninterrupted one.

- `SeededSampler` (`data.sampler: shuffle`): every image once per epoch, shuffled by (seed, epoch).
- `ClassBalancedSampler` (`data.sampler: class_balanced`): repeat-factor sampling as in LVIS
  (Gupta et al. 2019): with f(c) the fraction of training images that contain class c and t the
  `repeat_threshold`, r(c) = max(1, sqrt(t / f(c))); an image repeats r(image) = max over its
  classes of r(c) times per epoch (the rarest class it holds decides), fractional parts rounded
  stochastically from (seed, epoch).

Evaluation batches: `SameSizeBatchSampler` cuts a batch wherever the image size changes, so a
prediction never depends on the images beside it in its batch (their padding would enter it).
"""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import BatchSampler, ConcatDataset, Dataset, DistributedSampler, Sampler, SequentialSampler, Subset

SAMPLERS = ("shuffle", "class_balanced")


def item_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """The augmentation seed of one draw; `copy` tells the repeats of an image in one epoch
    apart (copy 0 gives the shuffle sampler's seed)."""
    key = [seed, epoch, index] + ([copy] if copy else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of one epoch, a function of the pair (seed, epoch): torch's DistributedSampler
    seeds with seed + epoch, which makes seed 0's epoch 1 seed 1's epoch 0."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class SeededSampler(DistributedSampler):
    """A shuffling DistributedSampler that hands each index with its own augmentation seed.
    Sharded as DistributedSampler shards: every rank builds the same epoch list (padded from its
    start to total_size, or cut to it with drop_last) and takes every num_replicas-th index."""

    def __iter__(self):
        n = len(self.dataset)
        order = epoch_order(n, self.seed, self.epoch) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        else:
            order = np.resize(order, self.total_size)  # repeats from the start, as DistributedSampler pads
        for index in order[self.rank: self.total_size: self.num_replicas].tolist():
            yield index, item_seed(self.seed, self.epoch, index)


def label_presence(dataset: Dataset) -> np.ndarray:
    """n_images x n_classes: which classes each image holds (concatenated parts in order)."""
    if isinstance(dataset, ConcatDataset):
        parts = [label_presence(part) for part in dataset.datasets]
        if len({p.shape[1] for p in parts}) != 1:
            raise ValueError("the training sources have different class lists; give them one data.classes")
        return np.concatenate(parts)
    return dataset.label_presence


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """Per image r = max(1, max over its object classes of sqrt(t / f(c))); Background (column 0)
    is in every image and no object class, so it never counts."""
    objects = presence[:, 1:]
    frequency = objects.mean(0)
    per_class = np.ones_like(frequency)
    seen = frequency > 0
    per_class[seen] = np.maximum(1.0, np.sqrt(threshold / frequency[seen]))
    return np.where(objects, per_class, 1.0).max(1, initial=1.0)


class ClassBalancedSampler(DistributedSampler):
    """Repeat-factor sampling, sharded like a DistributedSampler (every rank builds the same
    epoch list from (seed, epoch) and takes every num_replicas-th key).

    An epoch has a fixed length, ceil(sum of repeat factors) rounded up to a multiple of the
    number of processes (schedules and mid-epoch resume count batches before the epoch starts):
    the stochastically rounded list is cut to it, or continued from its start with new copy
    numbers (new augmentations) when rounding fell short.
    """

    def __init__(self, dataset: Dataset, repeat_threshold: float, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.factors = repeat_factors(label_presence(dataset), repeat_threshold)
        self.total_size = math.ceil(math.ceil(self.factors.sum() - 1e-9) / num_replicas) * num_replicas
        self.num_samples = self.total_size // num_replicas

    def epoch_keys(self) -> np.ndarray:
        """total_size x 2 array of (index, copy), the whole epoch across all ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])  # the pair, as the shuffle: no seed + epoch collision
        whole = np.floor(self.factors)
        counts = (whole + (rng.random(len(self.factors)) < self.factors - whole)).astype(np.int64)
        index = np.repeat(np.arange(len(counts)), counts)
        copy = np.arange(len(index)) - np.repeat(np.cumsum(counts) - counts, counts)
        order = rng.permutation(len(index))
        take = np.arange(self.total_size)
        rounds, position = take // len(order), order[take % len(order)]
        return np.stack([index[position], copy[position] + rounds * counts[index[position]]], axis=1)

    def __iter__(self):
        for index, copy in self.epoch_keys()[self.rank: self.total_size: self.num_replicas].tolist():
            yield index, item_seed(self.seed, self.epoch, index, copy)

    def __len__(self) -> int:
        return self.num_samples


class SameSizeBatchSampler(BatchSampler):
    """Batches of up to `batch_size` consecutive indices of `sampler`, a new one whenever the
    size (`sizes[index]`, H x W) changes: no image is padded to a batch mate's size, and the
    order is the sampler's exactly (a submission's rows and an OOF file's images stay in file
    order). The idea of torchvision's detection GroupedBatchSampler, without its reordering."""

    def __init__(self, sampler: Sampler[int], batch_size: int, sizes: np.ndarray, drop_last: bool = False):
        if drop_last:
            raise ValueError("evaluation batches keep every image: drop_last must be False")
        super().__init__(sampler, batch_size, drop_last)
        self.sizes = np.asarray(sizes)

    def __iter__(self):
        batch: list[int] = []
        for index in self.sampler:
            if batch and (len(batch) == self.batch_size or (self.sizes[index] != self.sizes[batch[-1]]).any()):
                yield batch
                batch = []
            batch.append(index)
        if batch:
            yield batch

    def __len__(self) -> int:
        return sum(1 for _ in self)  # sizes only, no image is read


def image_sizes(dataset: Dataset) -> np.ndarray:
    """n x 2 (H, W) of each item, from the annotation file's width/height (no image decoded);
    a Subset's in its own order."""
    if isinstance(dataset, Subset):
        return image_sizes(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return dataset.sizes


def eval_batches(dataset: Dataset, batch_size: int, sampler: Sampler[int] | None = None) -> SameSizeBatchSampler:
    """Same-size batches of `dataset` in file order (or `sampler`'s, e.g. a rank's shard under DDP)."""
    return SameSizeBatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size,
                                image_sizes(dataset))
