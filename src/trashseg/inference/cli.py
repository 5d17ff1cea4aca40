"""python inference.py --checkpoint CKPT [...]: submissions for test, metrics for val."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from trashseg.data.dataset import CocoSegmentationDataset
from trashseg.data.datamodule import pad_collate
from trashseg.submission import SubmissionWriter, to_submission_size
from trashseg.metric import SegmentationMetric

from .checkpoint import load_checkpoint, same_classes
from .predictor import Predictor
from .probs_store import ProbsWriter
from .tta import TTA_MODES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Leaderboard CSVs (--split test) or validation mIoU (--split val) from checkpoints.")
    p.add_argument("--checkpoint", action="append", type=Path, required=True, help="repeat for an ensemble")
    p.add_argument("--weights", nargs="+", type=float, help="one per checkpoint (default equal)")
    p.add_argument("--tta", default="none", choices=list(TTA_MODES))
    p.add_argument("--scales", nargs="+", type=float, default=[1.0])
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--data-root", type=Path, help="default: the first checkpoint's data.root")
    p.add_argument("--ann", help="annotation file under the data root (default: the checkpoint's test_ann / val_ann)")
    p.add_argument("--out", type=Path, help="CSV (test) or JSON of metrics (val); default under submissions/")
    p.add_argument("--save-probs", type=Path, help="folder for per-image float16 probabilities (11 x 512 x 512 x 2 bytes "
                   "= 5.8 MB per image, 4.7 GB for 819 test images)")
    p.add_argument("--size", type=int, default=256, help="submission mask size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    return p.parse_args(argv)


def build_loader(cfg: dict, args, classes: list[str]) -> DataLoader:
    data = cfg["data"]
    root = args.data_root or Path(data["root"])
    ann = args.ann or data["test_ann" if args.split == "test" else "val_ann"]
    dataset = CocoSegmentationDataset(root, ann, classes=classes, overlap=data["overlap"], crowd=data["crowd"],
                                      mode=args.split, cache_dir=data["cache_dir"],
                                      images_relative_to=data.get("images_relative_to", "root"))
    return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=pad_collate,
                      pin_memory=args.device == "cuda")


def predictions(predictor: Predictor, loader: DataLoader, probs_writer: ProbsWriter | None):
    """(batch item, full-resolution labels) per image, cropped from the padded batch."""
    for batch in tqdm(loader, desc="predict", unit="batch"):
        probs = predictor.probs(batch["image"])
        labels = probs.argmax(1).cpu().numpy().astype(np.uint8)
        for i, (h, w) in enumerate(batch["orig_size"].tolist()):
            item = {k: v[i] for k, v in batch.items()}
            if probs_writer is not None:
                probs_writer.write(int(item["id"]), item["file_name"], probs[i, :, :h, :w].cpu().numpy())
            yield item, labels[i, :h, :w]


def run_test(predictor, loader, out: Path, size: int, probs_writer) -> None:
    with SubmissionWriter(out, size) as writer:
        for item, labels in predictions(predictor, loader, probs_writer):
            writer.write(item["file_name"], labels)
    print(f"wrote {out} ({len(writer.ids)} rows); check it with: python -m trashseg.submission check {out} "
          f"--test-json {loader.dataset.ann_path}")


def run_val(predictor, loader, classes: list[str], out: Path, size: int, probs_writer) -> dict:
    full, small = SegmentationMetric(len(classes), classes), SegmentationMetric(len(classes), classes)
    for item, labels in predictions(predictor, loader, probs_writer):
        h, w = labels.shape
        truth = item["mask"][:h, :w].numpy()
        full.update(torch.from_numpy(labels)[None], torch.from_numpy(truth)[None])
        small.update(torch.from_numpy(to_submission_size(labels, size))[None],
                     torch.from_numpy(to_submission_size(truth, size))[None])
    results = {"full resolution": {k: float(v) for k, v in full.compute().items()},
               f"{size}x{size}": {k: float(v) for k, v in small.compute().items()}}
    for name, metrics in results.items():
        print(f"{name}: mIoU {metrics['mIoU']:.4f}  pixel acc {metrics['pixel_acc']:.4f}  "
              f"per-image mIoU {metrics['mIoU_per_image']:.4f}")
    print("per-class IoU: " + ", ".join(f"{c} {results['full resolution'][f'IoU/{c}']:.3f}" for c in classes))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        checkpoints = [load_checkpoint(p) for p in args.checkpoint]
        classes = same_classes(checkpoints)
        predictor = Predictor(checkpoints, args.weights, args.tta, args.scales, args.device)
        loader = build_loader(checkpoints[0].cfg, args, classes)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    name = args.checkpoint[0].resolve().parent.parent.name
    out = args.out or Path("submissions") / (f"{name}.csv" if args.split == "test" else f"{name}_val.json")
    probs_writer = ProbsWriter(args.save_probs, classes, [str(p) for p in args.checkpoint]) if args.save_probs else None
    if args.split == "test":
        run_test(predictor, loader, out, args.size, probs_writer)
    else:
        run_val(predictor, loader, classes, out, args.size, probs_writer)
    if probs_writer is not None:
        probs_writer.close()
    return 0
