"""The model and data flags shared by inference.py, the OOF scorer and the pseudo-labeller,
and the models they name: repeated `--checkpoint`, `--checkpoints-from SWEEP_DIR` (every run of
a Hydra sweep, e.g. one per fold, by its best.ckpt) and `--model FILE` (an exported ONNX or
TorchScript file), in that order for `--weights`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from trashseg.data.dataset import CocoSegmentationDataset
from trashseg.data.fold_record import sha256_of, verify_fold_file
from trashseg.run_layout import BEST, best_checkpoint, is_run, job_order, last_checkpoint, read_config
from trashseg.tta import TTA_MODES

from .checkpoint import LoadedCheckpoint, load_checkpoint, same_classes
from .exported import LoadedExport, load_exported
from .postprocess import POST_MODES, check_post
from .predictor import Predictor


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", type=Path, default=[], help="repeat for an ensemble")
    parser.add_argument("--checkpoints-from", action="append", type=Path, default=[], metavar="SWEEP_DIR",
                        help="every run's best.ckpt of a sweep folder (e.g. all folds); repeatable, equal weights")
    parser.add_argument("--model", action="append", type=Path, default=[], metavar="FILE",
                        help="an exported model (python -m trashseg.tools.export): .onnx runs through onnxruntime, "
                             "TorchScript through torch; repeatable, mixes with checkpoints")
    parser.add_argument("--weights", nargs="+", type=float,
                        help="one per model: checkpoints, then --checkpoints-from runs, then --model files (default equal)")
    add_predictor_args(parser)


def add_predictor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", default="none", choices=list(TTA_MODES))
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0])
    parser.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"),
                        help="predict every image at H x W and upsample to its own size: the size training validated "
                             "at when frames differ in shape (TrashCan's cpu_recipe: 90 120); --scales apply on top")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_name,
                        help="cpu, cuda or cuda:N (one GPU of several; see --shard to use them all)")
    parser.add_argument("--post", default="none", choices=list(POST_MODES),
                        help="post-processing of each label map: mode3 (3x3 majority filter) or crf (dense CRF on the "
                             "probabilities and the image; needs pip install pydensecrf2)")


def device_name(text: str) -> str:
    """cpu, cuda or cuda:N, for argparse: a GPU index this machine lacks is one line, not a CUDA trace."""
    if text == "cpu" or text == "cuda" or re.fullmatch(r"cuda:\d+", text):
        if text != "cpu" and not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"--device {text}: no CUDA device here; use --device cpu")
        if text.startswith("cuda:") and int(text[5:]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s), "
                                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return text
    raise argparse.ArgumentTypeError(f"--device takes cpu, cuda or cuda:N, not {text!r}")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, help="default: the first checkpoint's data.root")
    parser.add_argument("--ann", help="annotation file under the data root (default: the checkpoint's test_ann / val_ann)")


def sweep_runs(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep; every one must hold checkpoints/best.ckpt, so an ensemble
    never silently skips an unfinished run."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep_dir}")
    runs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and is_run(p)), key=job_order)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir} holds no run folders (subfolders with config.yaml); give the folder of a "
                                "sweep (python train.py -m ...), e.g. runs/multirun/<experiment>/<time>")
    for run in runs:
        if not best_checkpoint(run).is_file():
            raise FileNotFoundError(f"{run} has no {BEST} (unfinished or failed run); finish it with "
                                    f"resume={last_checkpoint(run)} or move the folder out of {sweep_dir}")
    return runs


def run_fold(run: Path) -> int | None:
    """The data.fold a run was trained on, None when it was not a fold run."""
    return read_config(run)["data"].get("fold")


def checkpoint_paths(args: argparse.Namespace) -> list[Path]:
    paths = list(args.checkpoint)
    for sweep in args.checkpoints_from:
        paths += [best_checkpoint(run) for run in sweep_runs(sweep)]
    if not paths and not getattr(args, "model", None):
        raise ValueError("no model given: pass --checkpoint CKPT (repeatable), --checkpoints-from SWEEP_DIR and/or "
                         "--model FILE.onnx")
    return paths


def load_predictor(args: argparse.Namespace) -> tuple[list[LoadedCheckpoint | LoadedExport], list[str], Predictor]:
    """The models (checkpoints, then exported files; one class list), their classes and the
    weighted TTA/multi-scale predictor."""
    check_post(args.post)  # a missing optional package stops before any checkpoint is read
    sources = [load_checkpoint(p) for p in checkpoint_paths(args)] + [load_exported(p) for p in args.model]
    classes = same_classes(sources)
    return sources, classes, Predictor(sources, args.weights, args.tta, args.scales, args.device, args.resize)


def model_digests(models: list[LoadedCheckpoint | LoadedExport]) -> list[str]:
    """The sha256 of each model's file, each distinct file read once: a model is its content, so the
    same checkpoint named by another path (or copied) is the same model. Cheap beside loading it:
    95 ms for a 143 MiB checkpoint that takes 240 ms to load (2026-12-06, docs/inference.md, Several GPUs)."""
    digests: dict[Path, str] = {}
    for model in models:
        path = Path(model.path).resolve()
        if path not in digests:
            digests[path] = sha256_of(path)
    return [digests[Path(m.path).resolve()] for m in models]


def settings_record(args: argparse.Namespace, models: list[LoadedCheckpoint | LoadedExport], predictor: Predictor,
                    dataset: CocoSegmentationDataset) -> dict:
    """What made a run's probabilities, as a --save-probs folder records it (`made_by`): the models by
    content with their normalised weights, the predictor's flags, `--post`, and the data (split, root,
    annotation file by content, and the image folder the crf post-processing reads again)."""
    return {
        "models": [{"sha256": digest, "weight": weight} for digest, weight in zip(model_digests(models), predictor.weights)],
        "tta": args.tta,
        "scales": [float(s) for s in args.scales],
        "resize": list(args.resize) if args.resize else None,
        "post": args.post,
        "split": args.split,
        "data_root": str(dataset.root.resolve()),
        "annotation": str(dataset.ann_path.resolve()),
        "annotation_sha256": sha256_of(dataset.ann_path),
        "image_folder": str(dataset.image_root.resolve()),
    }


def check_fold_files(source: LoadedCheckpoint | LoadedExport, sides: tuple[str, ...], data_root: Path | None) -> None:
    """Before any work: refuses (one line) a fold file of `source`'s fold run that changed since
    it trained, among the `sides` ("train", "val") about to be read; for a run trained before
    fold files were recorded, prints one warning line and goes on."""
    warnings = [w for side in sides if (w := verify_fold_file(source.cfg, side, data_root, source.path))]
    if warnings:
        print(warnings[0], file=sys.stderr)
