"""python inference.py --checkpoint CKPT [...]: submissions for test, metrics for val."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from trashseg.atomic import write_text
from trashseg.errors import run_or_report
from trashseg.metric import SegmentationMetric, foreground_iou
from trashseg.submission import SubmissionWriter, to_submission_size

from .loop import build_loader, predict_labels, predict_probs
from .options import add_data_args, add_model_args, check_fold_files, load_predictor, settings_record
from .predictor import Predictor
from .probs_store import ProbsWriter
from .shards import parse_shard


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Leaderboard CSVs (--split test) or validation mIoU (--split val) from "
                                "checkpoints and exported models.")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--out", type=Path, help="CSV (test) or JSON of metrics (val); default submissions/<run>.csv or "
                   "submissions/<run>_val.json, <run> naming the first checkpoint's run (e.g. quickstart_<time>)")
    p.add_argument("--save-probs", type=Path, help="folder for per-image float16 probabilities (11 x 512 x 512 x 2 bytes "
                   "= 5.8 MB per image, 4.7 GB for 819 test images; float32, twice that, for a --shard)")
    p.add_argument("--size", type=int, default=256, help="submission mask size")
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="predict images I, I+N, ... of the split only, into --save-probs (one process per GPU; merge the "
                        "parts with python -m trashseg.inference.shards, docs/inference.md)")
    args = p.parse_args(argv)
    if args.shard and not args.save_probs:
        p.error("--shard writes probabilities only: add --save-probs FOLDER (one per shard)")
    if args.shard and args.out:
        p.error("--shard writes no CSV or metrics (a part of the split is not a submission): drop --out; merge the "
                "shards, then python -m trashseg.inference.ensemble --probs MERGED --out FILE.csv")
    return args


def _predictions(predictor: Predictor, loader, probs_writer: ProbsWriter | None,
                 post: str) -> Iterator[tuple[dict, torch.Tensor, np.ndarray]]:
    """(batch item, probabilities, full-resolution uint8 labels after `post`) per image; the
    saved probabilities are the model's, before post-processing."""
    for item, probs, labels in predict_labels(predictor, loader, post):
        if probs_writer is not None:
            probs_writer.write(int(item["id"]), item["file_name"], probs.cpu().numpy())
        yield item, probs, labels.cpu().numpy().astype(np.uint8)


def predictions(predictor: Predictor, loader, probs_writer: ProbsWriter | None = None,
                post: str = "none") -> Iterator[tuple[dict, np.ndarray]]:
    """(batch item, full-resolution uint8 labels after `post`) per image."""
    for item, _, labels in _predictions(predictor, loader, probs_writer, post):
        yield item, labels


def run_test(predictor, loader, out: Path, size: int, probs_writer, post: str = "none") -> str:
    with SubmissionWriter(out, size) as writer:
        for item, labels in predictions(predictor, loader, probs_writer, post):
            writer.write(item["file_name"], labels)
    return (f"wrote {out} ({len(writer.ids)} rows); check it with: python -m trashseg.submission check {out} "
            f"--test-json {loader.dataset.ann_path}")


class _ValMetrics:
    """The metric at full resolution and at the submission's size."""

    def __init__(self, classes: list[str], size: int):
        self.size = size
        self.full, self.small = SegmentationMetric(len(classes), classes), SegmentationMetric(len(classes), classes)

    def update(self, labels: np.ndarray, truth: np.ndarray) -> None:
        self.full.update(torch.from_numpy(labels)[None], torch.from_numpy(truth)[None])
        self.small.update(torch.from_numpy(to_submission_size(labels, self.size))[None],
                          torch.from_numpy(to_submission_size(truth, self.size))[None])

    def compute(self) -> dict:
        full = {k: float(v) for k, v in self.full.compute().items()}
        full["foreground IoU"] = float(foreground_iou(self.full.confusion))
        full["confusion"] = self.full.confusion.tolist()  # rows: truth, columns: prediction, in class order
        return {"full resolution": full, f"{self.size}x{self.size}": {k: float(v) for k, v in self.small.compute().items()}}


def _print_metrics(results: dict, classes: list[str], title: str = "") -> None:
    for name, metrics in results.items():
        found = f"  foreground IoU {metrics['foreground IoU']:.4f}" if "foreground IoU" in metrics else ""
        print(f"{title}{name}: mIoU {metrics['mIoU']:.4f}  pixel acc {metrics['pixel_acc']:.4f}  "
              f"per-image mIoU {metrics['mIoU_per_image']:.4f}{found}")
    print(f"{title}per-class IoU: " + ", ".join(f"{c} {results['full resolution'][f'IoU/{c}']:.3f}" for c in classes))


def run_val(predictor, loader, classes: list[str], out: Path, size: int, probs_writer, post: str = "none") -> str:
    """Metrics of the labels a submission would get (after `post`); with post-processing also
    those of the plain argmax, under "without post-processing", and the difference."""
    final, plain = _ValMetrics(classes, size), _ValMetrics(classes, size)
    for item, probs, labels in _predictions(predictor, loader, probs_writer, post):
        h, w = labels.shape
        truth = item["mask"][:h, :w].numpy()
        final.update(labels, truth)
        if post != "none":
            plain.update(probs.argmax(0).cpu().numpy().astype(np.uint8), truth)
    results = {**final.compute(), "post": post}
    if post != "none":
        results["without post-processing"] = plain.compute()
        _print_metrics(results["without post-processing"], classes, "without post-processing, ")
    _print_metrics({k: results[k] for k in ("full resolution", f"{size}x{size}")}, classes,
                   f"with --post {post}, " if post != "none" else "")
    if post != "none":
        gain = results["full resolution"]["mIoU"] - results["without post-processing"]["full resolution"]["mIoU"]
        print(f"--post {post} changes full-resolution mIoU by {gain:+.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(results, indent=1))
    return f"wrote {out}"


def output_name(source) -> str:
    """What a default output is named after: a checkpoint's run (runs/quickstart/<time>/checkpoints/
    best.ckpt -> quickstart_<time>; a sweep's job, whose folder is its number, -> quickstart_<time>_0),
    an exported file's stem."""
    path = Path(source.path).resolve()
    if path.suffix != ".ckpt":
        return source.run_name
    run = path.parent.parent
    parts = [run.parent.name, run.name] if run.name.isdigit() else [run.name]
    experiment = source.cfg.get("experiment_name")
    if experiment and not parts[0].startswith(experiment):
        parts.insert(0, experiment)
    return "_".join(parts)


def default_out(source, split: str) -> Path:
    """Without --out: submissions/<name>.csv for test, submissions/<name>_val.json for val."""
    name = output_name(source)
    return Path("submissions") / (f"{name}.csv" if split == "test" else f"{name}_val.json")


def run_shard(predictor, loader, args: argparse.Namespace, classes: list[str], sources: list[str], made_by: dict,
              total: int) -> str:
    """One part of a split's probabilities (inference.shards merges the parts).

    Stored in float32, the precision one process argmaxes (and post-processes) in: float16, as a
    plain --save-probs folder stores them, rounds near-tie pixels onto ties that argmax then breaks
    towards the lower class (5,864 of 2,621,440 labels changed in one reviewed ensemble).
    Labelling the one-process CSV from float16 instead would make every default CSV lose that
    information, so the shards pay twice the disk (11.5 MB a 512 px image with 11 classes) for a
    merged CSV that is the one-process CSV byte for byte: both go through postprocess() on the
    same float32 numbers. `total`: the images of the whole split."""
    index, count = args.shard
    shard = {"index": index, "count": count, "total": total}
    with ProbsWriter(args.save_probs, classes, sources, shard, made_by, dtype=np.float32) as probs_writer:
        for item, probs in predict_probs(predictor, loader):  # probabilities only: the labels are the merge's
            probs_writer.write(int(item["id"]), item["file_name"], probs.cpu().numpy())
    return (f"wrote shard {index}/{count} ({len(loader.dataset)} of {total} images) to {args.save_probs}; when every "
            "shard is done: python -m trashseg.inference.shards PART0 PART1 ... --out MERGED")


def run(args: argparse.Namespace) -> str:
    models, classes, predictor = load_predictor(args)
    if args.split == "val" and not args.ann:  # a fold run's own val file: the one it validated on?
        check_fold_files(models[0], ("val",), args.data_root)
    loader = build_loader(models[0].cfg, args.split, classes, args.data_root, args.ann, args.batch_size,
                          args.num_workers, args.device, shard=args.shard)
    sources = [str(m.path) for m in models]
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # a shard's Subset: the whole split's dataset
    made_by = settings_record(args, models, predictor, dataset) if args.save_probs else None
    if args.shard:
        return run_shard(predictor, loader, args, classes, sources, made_by, len(dataset))
    out = args.out or default_out(models[0], args.split)
    # a failed run removes its half-written probabilities folder at once
    with (ProbsWriter(args.save_probs, classes, sources, made_by=made_by) if args.save_probs
          else contextlib.nullcontext()) as probs_writer:
        if args.split == "test":
            return run_test(predictor, loader, out, args.size, probs_writer, args.post)
        return run_val(predictor, loader, classes, out, args.size, probs_writer, args.post)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_or_report(lambda: run(args))
