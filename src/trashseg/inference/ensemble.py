"""Combine saved probabilities of several runs into a submission, without re-running models.

    python -m trashseg.inference.ensemble --probs runs/a/probs runs/b/probs [--weights 2 1] --out submissions/ens.csv

The labels come from the weighted sum through `postprocess`, the function inference.py labels
its own probabilities with, with the `--post` the folders record (the one their inference.py
command applied) unless `--post` here chooses another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trashseg.data.image_io import read_rgb
from trashseg.errors import run_or_report
from trashseg.submission import SubmissionWriter

from .postprocess import POST_MODES, check_post, postprocess
from .predictor import normalised_weights
from .probs_store import read_index


def recorded_post(folders: list[Path], indexes: list[dict]) -> str:
    """The --post every folder's command applied ("none" for a folder that records none)."""
    posts = [index.get("made_by", {}).get("post", "none") for index in indexes]
    if len(set(posts)) > 1:
        made = ", ".join(f"{folder}: {post}" for folder, post in zip(folders, posts))
        raise ValueError(f"the folders were made with different --post ({made}); choose one for the ensemble with --post")
    return posts[0]


def image_folder(folder: Path, index: dict) -> Path:
    """Where the images of a folder's probabilities are: --post crf reads them again."""
    if "image_folder" not in index.get("made_by", {}):
        raise ValueError(f"--post crf needs the images, and {folder} does not record where they are (written before "
                         "probabilities folders recorded it); write it again with inference.py --save-probs")
    return Path(index["made_by"]["image_folder"])


def ensemble(folders: list[Path], weights: list[float] | None, out: Path, size: int = 256, post: str | None = None) -> str:
    weights = normalised_weights(weights, len(folders), "weights", "folder")  # as the predictor weighs its models
    indexes = [read_index(f) for f in folders]
    for folder, index in zip(folders, indexes):
        if shard := index.get("shard"):  # its CSV would hold a part of the split, a valid-looking partial submission
            raise ValueError(f"{folder} is shard {shard['index']}/{shard['count']} of a split of {shard['total']} images; "
                             "merge the shards first: python -m trashseg.inference.shards PART0 PART1 ... --out MERGED")
    for folder, index in zip(folders[1:], indexes[1:]):
        if index["classes"] != indexes[0]["classes"]:
            raise ValueError(f"{folder} has classes {index['classes']} but {folders[0]} has {indexes[0]['classes']}")
        if index["images"] != indexes[0]["images"]:
            raise ValueError(f"{folder} holds other images (or another order) than {folders[0]}")
    post = post or recorded_post(folders, indexes)
    check_post(post)
    images = image_folder(folders[0], indexes[0]) if post == "crf" else None
    with SubmissionWriter(out, size) as writer:
        for image in tqdm(indexes[0]["images"], desc="ensemble"):
            # float32 as stored by a shard (float16 files are widened exactly); one folder of weight 1 sums to itself
            total = sum(w * np.load(f / f"{image['id']}.npy").astype(np.float32, copy=False) for w, f in zip(weights, folders))
            rgb = read_rgb(images / image["file_name"]) if images is not None else None
            labels = postprocess(post, torch.from_numpy(total), rgb)
            writer.write(image["file_name"], labels.numpy().astype(np.uint8))
    return f"wrote {out}" + (f" (--post {post})" if post != "none" else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Ensemble saved probabilities into a submission CSV.")
    parser.add_argument("--probs", nargs="+", type=Path, required=True)
    parser.add_argument("--weights", nargs="+", type=float)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--post", choices=list(POST_MODES),
                        help="post-processing of the ensemble's labels (default: the --post the folders were made with)")
    args = parser.parse_args(argv)
    return run_or_report(lambda: ensemble(args.probs, args.weights, args.out, args.size, args.post))


if __name__ == "__main__":
    sys.exit(main())
