"""Combine saved probabilities of several runs into a submission, without re-running models.

    python -m trashseg.inference.ensemble --probs runs/a/probs runs/b/probs [--weights 2 1] --out submissions/ens.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trashseg.cli import run_or_report
from trashseg.submission import SubmissionWriter

from .probs_store import read_index


def ensemble(folders: list[Path], weights: list[float] | None, out: Path, size: int = 256) -> None:
    weights = weights or [1.0] * len(folders)
    if len(weights) != len(folders):
        raise ValueError(f"{len(weights)} weights for {len(folders)} folders; give one weight per folder")
    indexes = [read_index(f) for f in folders]
    for folder, index in zip(folders[1:], indexes[1:]):
        if index["classes"] != indexes[0]["classes"]:
            raise ValueError(f"{folder} has classes {index['classes']} but {folders[0]} has {indexes[0]['classes']}")
        if index["images"] != indexes[0]["images"]:
            raise ValueError(f"{folder} holds other images (or another order) than {folders[0]}")
    with SubmissionWriter(out, size) as writer:
        for image in tqdm(indexes[0]["images"], desc="ensemble"):
            total = sum(w * np.load(f / f"{image['id']}.npy").astype(np.float32) for w, f in zip(weights, folders))
            writer.write(image["file_name"], total.argmax(0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Ensemble saved probabilities into a submission CSV.")
    parser.add_argument("--probs", nargs="+", type=Path, required=True)
    parser.add_argument("--weights", nargs="+", type=float)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    return run_or_report(lambda: ensemble(args.probs, args.weights, args.out, args.size) or f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
