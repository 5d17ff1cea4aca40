"""The one inference loop: a split's loader through a predictor, image by image, at each
image's original size, and the one place where post-processing (`--post`) turns probabilities
into labels. inference.py, the OOF scorer, the pseudo-labeller and the tools use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from trashseg.data.datamodule import pad_collate
from trashseg.data.dataset import CocoSegmentationDataset
from trashseg.data.kfold import run_annotation
from trashseg.data.samplers import eval_batches

from .postprocess import postprocess
from .predictor import Predictor


def build_dataset(cfg: dict, split: str, classes: list[str], data_root: Path | None = None,
                  ann: str | Path | None = None) -> CocoSegmentationDataset:
    """`split` is "test" (no masks) or "val"; root and annotation file default to the run config's
    (for a fold run, val is its fold's val file)."""
    data = cfg["data"]
    root = data_root or Path(data["root"])
    ann = ann or (data["test_ann"] if split == "test" else run_annotation(data, "val", root))
    return CocoSegmentationDataset(root, ann, classes=classes, overlap=data["overlap"], crowd=data["crowd"],
                                   mode=split, cache_dir=data["cache_dir"],
                                   images_relative_to=data.get("images_relative_to", "root"))


def build_loader(cfg: dict, split: str, classes: list[str], data_root: Path | None = None, ann: str | Path | None = None,
                 batch_size: int = 4, num_workers: int = 2, device: str = "cpu", limit: int | None = None,
                 shard: tuple[int, int] | None = None) -> DataLoader:
    """A split's loader (see `build_dataset`), in file order, batched by image size so that no
    prediction depends on its batch mates' padding; `limit` keeps the file's first images, `shard`
    (i, n) its images i, i+n, ... (inference.shards)."""
    dataset = build_dataset(cfg, split, classes, data_root, ann)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    if shard is not None:
        dataset = Subset(dataset, range(shard[0], len(dataset), shard[1]))
    return DataLoader(dataset, batch_sampler=eval_batches(dataset, batch_size), num_workers=num_workers,
                      collate_fn=pad_collate, pin_memory=str(device).startswith("cuda"))


def predict_probs(predictor: Predictor, loader: DataLoader, desc: str = "predict") -> Iterator[tuple[dict, torch.Tensor]]:
    """(batch item, C x h x w probabilities on the predictor's device) per image, cropped to the
    image's original size (a batch holds one size, but an eval transform may have padded it)."""
    for batch in tqdm(loader, desc=desc, unit="batch"):
        for i, probs in enumerate(predictor.probs_per_image(batch["image"], batch["orig_size"].tolist())):
            yield {k: v[i] for k, v in batch.items()}, probs


def predict_labels(predictor: Predictor, loader: DataLoader, post: str = "none",
                   desc: str = "predict") -> Iterator[tuple[dict, torch.Tensor, torch.Tensor]]:
    """(batch item, C x h x w probabilities, h x w labels after `post`) per image, both on the
    predictor's device; with `post="none"` the labels are the probabilities' argmax."""
    for item, probs in predict_probs(predictor, loader, desc):
        h, w = probs.shape[-2:]
        yield item, probs, postprocess(post, probs, item["image"][:, :h, :w])
