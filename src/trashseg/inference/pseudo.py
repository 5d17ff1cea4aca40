"""Pseudo-labels: a COCO file for unlabelled images from the averaged probabilities at FULL
resolution (never from the 256x256 CSV, whose upsampling mislabels every object edge).

    python -m trashseg.inference.pseudo --checkpoints-from runs/multirun/<exp>/<time> --tta hflip \
        --split test --out data/recycle/pseudo/test_pseudo.json --min-confidence 0.9

It ends with the train.py command of the next round: the same experiment, overrides, data root
and folds as the runs that made the labels, with the new file as an extra source.

Per kept image, one annotation per predicted class (its confident pixels, compressed RLE) with
the training JSON's category ids and names, plus one `iscrowd: 1` annotation over the pixels
whose top probability is under `--min-confidence`: train with `crowd: ignore` (as the
`recycle_pseudo` experiment does) and they become 255, counted by neither loss nor metric.
Images whose mean top probability is under `--min-image-confidence` are left out. With `--post
mode3|crf` the labels are post-processed, and a pixel's confidence is the models' probability
of the label it keeps.

The next round's command (next_round_command) is built from the experiment, overrides and data
root of the runs that made the labels, their folds, and the new file as an extra training source.
A fixed recipe here once sent a synthetic-data sweep to
experiment=recycle_pseudo (GPU, ImageNet weights, data/recycle), which failed on its first fold.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from trashseg.data.coco import read_coco
from trashseg.data.kfold import run_annotation
from trashseg.data.pseudo_marker import marked
from trashseg.atomic import write_text
from trashseg.errors import run_or_report
from trashseg.run_layout import override_key, recorded_overrides

from .loop import build_loader, predict_labels
from .options import add_data_args, add_model_args, check_fold_files, load_predictor

# Overrides the next round sets itself (or must not repeat: the folder, a resume of the old run).
REPLACED = ("data.root", "data.fold", "data.extra_train", "resume")


def extra_train_override(pseudo_file: Path, image_root: Path) -> str:
    """The Hydra override that trains on `pseudo_file` as an extra source: crowd regions ignored,
    and its file names (copied from the labelled JSON) resolved against the folder they are
    relative to, `image_root`. Without it a source inherits the main data's images_relative_to,
    and with `ann` (TrashCan) looked for the images beside the pseudo file."""
    ann, root = _hydra_quoted(pseudo_file.resolve()), _hydra_quoted(Path(image_root).resolve())
    return f"data.extra_train=[{{ann:{ann},root:{root},images_relative_to:root,crowd:ignore}}]"


def _hydra_quoted(path: Path) -> str:
    """A Hydra quoted string: paths with spaces, commas or brackets parse as one value."""
    return '"' + str(path).replace('"', '\\"') + '"'


def next_sweep_dir(sweep: Path) -> Path:
    """runs/folds/x -> runs/folds/x_round2; x_round2 -> x_round3."""
    match = re.fullmatch(r"(.*)_round(\d+)", sweep.name)
    name = f"{match[1]}_round{int(match[2]) + 1}" if match else f"{sweep.name}_round2"
    return sweep.with_name(name)


def next_round_command(sources: Sequence, pseudo_file: Path, image_root: Path, data_root: Path | None,
                       sweeps: Sequence[Path] = ()) -> str:
    """`sources`: the models that made the labels (`.path`, `.cfg`), the first one's run giving the
    experiment and overrides; `sweeps`: the --checkpoints-from folders they came from."""
    cfg = sources[0].cfg
    typed = recorded_overrides(Path(sources[0].path).resolve().parent.parent)  # the run of <run>/checkpoints/x.ckpt
    if typed is None:  # no run folder at hand (an exported file): the experiment its config names
        name = cfg.get("experiment_name")
        typed = [f"experiment={name}"] if name and name != "default" else []
    words = ["python", "train.py"]
    folds = sorted({s.cfg["data"].get("fold") for s in sources} - {None})
    if len(folds) > 1:
        words.append("-m")
    words += [o for o in typed if override_key(o) not in REPLACED and not override_key(o).startswith("hydra.")]
    words.append(f"data.root={Path(data_root or cfg['data']['root']).resolve()}")
    if folds:
        words.append(f"data.fold={','.join(map(str, folds))}")
    words.append(extra_train_override(pseudo_file, image_root))
    if len(folds) > 1 and len(sweeps) == 1:
        words.append(f"hydra.sweep.dir={next_sweep_dir(Path(sweeps[0]))}")
    return shlex.join(words)


def training_categories(cfg: dict, classes: list[str], data_root: Path | None) -> list[dict]:
    """The categories of the checkpoint's training JSON (ids and names), in class order; when
    that file is not at hand, the competition's convention: category id = label."""
    data = cfg["data"]
    root = data_root or Path(data["root"])
    ann = run_annotation(data, "train", root)
    by_name = {c["name"]: c for c in read_coco(root / ann).get("categories", [])} if (root / ann).is_file() else {}
    return [by_name.get(name, {"id": label, "name": name, "supercategory": name}) for label, name in enumerate(classes) if label]


def encode(mask: np.ndarray) -> dict:
    """0/1 H x W -> compressed RLE with a JSON-ready string `counts`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotate(labels: np.ndarray, confident: np.ndarray, categories: list[dict], image_id: int, next_id: int) -> list[dict]:
    """Annotations of one image: a region per predicted foreground class, then the unconfident pixels as crowd."""
    regions = [(categories[label - 1]["id"], (labels == label) & confident, 0) for label in np.unique(labels[confident]) if label]
    if not confident.all():
        unsure = ~confident
        # a crowd region needs a category; the one predicted most often there (crowd: ignore paints 255 anyway)
        counts = np.bincount(labels[unsure], minlength=len(categories) + 1)[1:]
        regions.append((categories[int(counts.argmax())]["id"], unsure, 1))
    out = []
    for k, (category_id, mask, crowd) in enumerate(regions):
        rle = encode(mask)
        out.append({"id": next_id + k, "image_id": image_id, "category_id": int(category_id), "segmentation": rle,
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": crowd})
    return out


def pseudo_label(args: argparse.Namespace) -> str:
    if not 0.0 <= args.min_confidence <= 1.0 or not 0.0 <= args.min_image_confidence <= 1.0:
        raise ValueError("--min-confidence and --min-image-confidence are probabilities between 0 and 1")
    checkpoints, classes, predictor = load_predictor(args)
    cfg = checkpoints[0].cfg
    if args.split == "val" and not args.ann:  # labelling a fold run's val images: the ones it did not train on?
        check_fold_files(checkpoints[0], ("val",), args.data_root)
    loader = build_loader(cfg, args.split, classes, args.data_root, args.ann, args.batch_size, args.num_workers, args.device)
    categories = training_categories(cfg, classes, args.data_root)
    source = read_coco(loader.dataset.ann_path)
    image_entry = {im["id"]: im for im in source["images"]}
    images, annotations, skipped, unsure_pixels, pixels = [], [], 0, 0, 0
    for item, probs, labels in predict_labels(predictor, loader, args.post, desc="pseudo-label"):
        # The models' probability of the label kept: where --post relabelled a pixel against
        # them, it is lower than their top one, and the pixel may become unconfident.
        confidence = probs.gather(0, labels[None].long())[0].cpu().numpy()
        labels = labels.cpu().numpy()
        if confidence.mean() < args.min_image_confidence:
            skipped += 1
            continue
        confident = confidence >= args.min_confidence
        image_id = int(item["id"])
        images.append(image_entry[image_id])
        annotations += annotate(labels.astype(np.int64), confident, categories, image_id, len(annotations) + 1)
        unsure_pixels, pixels = unsure_pixels + int((~confident).sum()), pixels + confident.size
    info = {"description": "trashseg pseudo-labels; train with crowd: ignore (iscrowd regions = unconfident pixels)",
            "checkpoints": [str(c.path) for c in checkpoints], "tta": args.tta, "scales": args.scales,
            "resize": args.resize, "post": args.post,
            "min_confidence": args.min_confidence, "min_image_confidence": args.min_image_confidence,
            "source": str(loader.dataset.ann_path), "image_root": str(Path(loader.dataset.image_root).resolve())}
    coco = {"info": marked(info),  # the data module refuses a marked file read without crowd: ignore
            "images": images, "annotations": annotations, "categories": categories}
    write_text(args.out, json.dumps(coco))
    command = next_round_command(checkpoints, args.out, loader.dataset.image_root, args.data_root, args.checkpoints_from)
    return (f"wrote {args.out}: {len(images)} images ({skipped} left out under --min-image-confidence "
            f"{args.min_image_confidence}), {len(annotations)} annotations, {unsure_pixels / max(pixels, 1):.1%} of pixels "
            f"unconfident (ignored under crowd: ignore). Train on it with: {command}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="COCO pseudo-labels from the averaged full-resolution probabilities.")
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument("--split", default="test", choices=["test", "val"], help="which annotation file's images to label")
    parser.add_argument("--out", type=Path, required=True, help="the COCO file to write, e.g. DATA_ROOT/pseudo/test_pseudo.json")
    parser.add_argument("--min-confidence", type=float, default=0.9,
                        help="pixels whose top probability is lower become an iscrowd region (255 under crowd: ignore)")
    parser.add_argument("--min-image-confidence", type=float, default=0.0,
                        help="leave out images whose mean top probability is lower")
    args = parser.parse_args(argv)
    return run_or_report(lambda: pseudo_label(args))


if __name__ == "__main__":
    sys.exit(main())
