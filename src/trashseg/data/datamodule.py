"""Lightning DataModule: train/val/test loaders for a COCO trash dataset described by a data config."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader, default_collate

from .classes import CLASSES, IGNORE_INDEX
from .coco import read_coco
from .copy_paste import CopyPaste
from .copy_paste import KEYS as COPY_PASTE_KEYS
from .dataset import CocoSegmentationDataset
from .kfold import fold_annotations
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .pseudo_marker import refuse_pseudo_labels_as_labels
from .samplers import SAMPLERS, ClassBalancedSampler, SeededSampler, eval_batches  # noqa: F401  (SeededSampler: public here since before)
from .synthetic import is_synthetic, synthetic_note


def _worker_init(_worker_id: int) -> None:
    # Each worker is one process: OpenCV's own thread pool would only oversubscribe the cores.
    cv2.setNumThreads(0)


def pad_collate(items: list[dict]) -> dict:
    """default_collate, after padding images of different sizes to the largest at the
    bottom/right: image with 0, mask with IGNORE_INDEX, so padding never counts in loss or
    metric. `orig_size` tells consumers where to crop."""
    height = max(item["image"].shape[1] for item in items)
    width = max(item["image"].shape[2] for item in items)
    for item in items:
        pad = (0, width - item["image"].shape[2], 0, height - item["image"].shape[1])
        if any(pad):
            item["image"] = F.pad(item["image"], pad, value=0)
            if "mask" in item:
                item["mask"] = F.pad(item["mask"], pad, value=IGNORE_INDEX)
    return default_collate(items)


class SeededConcatDataset(ConcatDataset):
    """ConcatDataset that passes the sampler's (index, seed) keys on to its parts."""

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, None)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][(local, seed) if seed is not None else local]


EXTRA_SOURCE_KEYS = ("root", "ann", "images_relative_to", "overlap", "crowd")
AUGMENT_KEYS = ("train", "val", "test", "copy_paste")


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class TrashDataModule(L.LightningDataModule):
    """Builds the datasets of one data config; see docs/CONTRACTS.md for the batch format.

    Samplers are ours, so the Trainer runs with `use_distributed_sampler=False`:
    train uses a seeded DistributedSampler even on one process (order and augmentations are a
    function of seed and epoch, which makes a resumed run see the same batches), val/test never pad,
    so no sample is counted twice by the metric under DDP, and batch only images of one size.

    `sampler`: `shuffle` (every image once per epoch) or `class_balanced` (LVIS repeat-factor
    sampling with `repeat_threshold`, see trashseg.data.samplers). `augment.copy_paste` turns on
    copy-paste for every training source, from a pool of the main train file's objects.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] = CLASSES,
        train_ann: str = "train.json",
        val_ann: str = "val.json",
        test_ann: str = "test.json",
        overlap: str = "area_desc",
        crowd: str = "label",
        cache_dir: str | None = None,
        images_relative_to: str = "root",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        sampler: str = "shuffle",
        repeat_threshold: float = 0.1,
        synthetic: Mapping | None = None,
        fold: int | None = None,
        folds_dir: str = "folds",
        extra_train: Sequence[Mapping] | None = None,
        augment: Mapping | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.anns = {"train": train_ann, "val": val_ann, "test": test_ann}
        self.fold, self.folds_dir = fold, folds_dir
        self.extra_train = [refuse_pseudo_labels_as_labels(i, self._extra_source(i, source), self.root, crowd)
                            for i, source in enumerate(extra_train or [])]
        if fold is not None:
            self.annotation_file("train")  # a bad fold index or missing fold file stops before any run folder exists
        self.dataset_kwargs = {"classes": self.classes, "overlap": overlap, "crowd": crowd, "cache_dir": cache_dir,
                               "images_relative_to": images_relative_to}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        self.mean, self.std = list(mean), list(std)
        self.seed = seed
        if sampler not in SAMPLERS:
            raise ValueError(f"data.sampler={sampler!r} is not a sampler; choose one of {', '.join(SAMPLERS)}")
        if not 0 < repeat_threshold <= 1:
            raise ValueError(f"data.repeat_threshold={repeat_threshold!r}: a fraction of images in (0, 1], e.g. 0.1 "
                             "(classes in fewer images than that are repeated)")
        self.sampler, self.repeat_threshold = sampler, repeat_threshold
        self.synthetic = dict(synthetic) if synthetic else None
        unknown = sorted(set(augment or {}) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown}; it takes {', '.join(AUGMENT_KEYS)}")
        self.augment = {split: list((augment or {}).get(split) or []) for split in ("train", "val", "test")}
        self.copy_paste = (augment or {}).get("copy_paste")
        if self.copy_paste is not None:
            unknown = sorted(set(self.copy_paste) - set(COPY_PASTE_KEYS))
            if unknown:  # the rest is checked when the pool is built, against the class list
                raise ValueError(f"augment.copy_paste: unknown keys {unknown}; it takes {', '.join(COPY_PASTE_KEYS)}")
        self.datasets: dict[str, CocoSegmentationDataset] = {}

    @property
    def generates_synthetic(self) -> bool:
        """Whether prepare_data writes the synthetic dataset here: only where it was asked for, its
        `synthetic.root` (the data root when the mapping names none); anywhere else a missing file
        is an error, never fake data in the folder meant for real data."""
        if not self.synthetic:
            return False
        return Path(self.synthetic.get("root") or self.root).resolve() == self.root.resolve()

    def check_annotation_files(self) -> None:
        """The train and val files exist (or prepare_data is about to generate them) and hold
        annotations: a trainer calls this before it makes a run folder, so a wrong data.root stops in
        one line with nothing written, and a test split (or an emptied file) never trains as
        all-background masks without a word."""
        for split in ("train", "val"):
            path = self.root / self.annotation_file(split)
            if not path.is_file():
                if self.generates_synthetic:
                    continue
                where = "the folder does not exist" if not self.root.is_dir() else f"it holds no {path.name}"
                hint = (f"; the synthetic dataset is generated only into {self.synthetic.get('root')} (or into "
                        "data.root with data=synthetic on the command line)") if self.synthetic else ""
                raise FileNotFoundError(
                    f"annotation file not found: {path} (data.{split}_ann under data.root={self.root}: {where}); point "
                    f"data.root at the folder holding your dataset's {path.name} (docs/data.md#layout){hint}")
            coco = read_coco(path)
            if not coco.get("annotations"):
                named = f"data.{split}_ann" if self.fold is None else f"fold {self.fold}'s {split} file"
                raise ValueError(f"{path} ({named}) has no annotations, so every mask would be background; point "
                                 f"{named} at an annotated file (test.json has none)")
            if split == "train" and is_synthetic(coco):
                rank_zero_info(synthetic_note(path))

    def _extra_source(self, i: int, source: Mapping) -> dict:
        """Checked now, before any run folder exists: known keys, and a file that holds labels."""
        unknown = sorted(set(source) - set(EXTRA_SOURCE_KEYS))
        if unknown or "ann" not in source:
            raise ValueError(f"data.extra_train[{i}] = {dict(source)}: each extra source takes 'ann' and optionally "
                             f"{', '.join(k for k in EXTRA_SOURCE_KEYS if k != 'ann')}"
                             + (f"; unknown keys {unknown}" if unknown else "; 'ann' is missing"))
        path = Path(source.get("root") or self.root) / source["ann"]
        if not read_coco(path).get("annotations"):
            raise ValueError(f"data.extra_train[{i}]: {path} has no annotations (a test split?); every pixel would "
                             "train as Background. Give a labelled file, e.g. from python -m trashseg.inference.pseudo")
        return dict(source)

    def prepare_data(self) -> None:
        """Generate the synthetic dataset on first use and build the copy-paste pool (rank 0
        only, before setup: the other processes then load the pool from disk)."""
        if self.generates_synthetic and not (self.root / self.anns["train"]).exists():
            from .synthetic import generate_dataset

            generate_dataset(self.root, **{k: v for k, v in self.synthetic.items() if k != "root"})
            rank_zero_info(f"generated trashseg's synthetic dataset (shapes, not competition data) into {self.root}")
        if self.copy_paste is not None and self.dataset_kwargs["cache_dir"] is not False:
            self._main_train(copy_paste=self.copy_paste)

    def _extra_dataset(self, source: Mapping, copy_paste: CopyPaste | None) -> CocoSegmentationDataset:
        """An extra training source; its own overlap / crowd / images_relative_to override the main one's."""
        kwargs = {**self.dataset_kwargs, **{k: v for k, v in source.items() if k not in ("root", "ann")}}
        return CocoSegmentationDataset(source.get("root") or self.root, source["ann"], transforms=self.augment["train"],
                                       mode="train", copy_paste=copy_paste, **kwargs)

    def _main_train(self, copy_paste: Mapping | None) -> CocoSegmentationDataset:
        return CocoSegmentationDataset(self.root, self.annotation_file("train"), transforms=self.augment["train"],
                                       mode="train", copy_paste=copy_paste, **self.dataset_kwargs)

    def annotation_file(self, split: str) -> Path:
        """`<split>_ann`, or with `fold` set the fold's train / val file under `folds_dir`."""
        if self.fold is not None and split in ("train", "val"):
            train, val = fold_annotations(self.root, self.folds_dir, self.fold)
            return train if split == "train" else val
        return Path(self.anns[split])

    def dataset(self, split: str) -> CocoSegmentationDataset | SeededConcatDataset:
        """The split's dataset; train concatenates the `extra_train` sources after the main one."""
        if split not in self.datasets:
            if split == "train":
                main = self._main_train(self.copy_paste)
                if self.extra_train:  # the extra sources paste from the main file's pool too
                    main = SeededConcatDataset([main, *(self._extra_dataset(s, main.copy_paste) for s in self.extra_train)])
            else:
                main = CocoSegmentationDataset(self.root, self.annotation_file(split), transforms=self.augment[split],
                                               mode=split, **self.dataset_kwargs)
            self.datasets[split] = main
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: str, **batching) -> DataLoader:
        """`batching`: sampler, batch_size and drop_last, or a batch_sampler."""
        return DataLoader(
            self.dataset(split),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=pad_collate,
            worker_init_fn=_worker_init,
            **batching,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = _world()
        dataset = self.dataset("train")
        if self.sampler == "class_balanced":
            sampler = ClassBalancedSampler(dataset, self.repeat_threshold, num_replicas=world, rank=rank, seed=self.seed)
        else:
            sampler = SeededSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return self._loader("train", sampler=sampler, batch_size=self.batch_size, drop_last=self.drop_last)

    def _eval_loader(self, split: str) -> DataLoader:
        """File order (a rank's shard of it under DDP), batched by image size: a prediction does
        not depend on its batch mates' padding."""
        world, rank = _world()
        dataset = self.dataset(split)
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        return self._loader(split, batch_sampler=eval_batches(dataset, self.val_batch_size, sampler))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
