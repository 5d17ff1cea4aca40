"""What a fold run trained and validated on: the content hash (sha256 of the bytes) and image
count of its two fold files, kept in the run's config (`fold_record`, so in config.yaml and in
the checkpoint's hyper_parameters.cfg).

Fold files can be regenerated after training (`kfold --force` with another seed): the OOF
scorer, `inference.py --split val`, export calibration and the pseudo-labeller would then read a
"val" file holding images the model trained on, and score them without a word. They check the
file they read against the record first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .coco import read_coco
from .kfold import fold_annotations, run_annotation

RECORD_KEY = "fold_record"
SIDES = ("train", "val")


class FoldFileChanged(ValueError):
    """A fold file whose content differs from the one the run trained or validated on."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(root: str | Path, ann: str | Path) -> dict:
    """{file (as the config names it, relative to the data root), sha256, images}."""
    path = Path(root) / ann
    return {"file": str(ann), "sha256": sha256_of(path), "images": len(read_coco(path)["images"])}


def record_folds(data: dict) -> dict | None:
    """The record of a fold run's train and val files (`data.fold` set), None for other runs."""
    if data.get("fold") is None:
        return None
    files = fold_annotations(data["root"], data.get("folds_dir", "folds"), data["fold"])
    return {side: file_record(data["root"], ann) for side, ann in zip(SIDES, files)}


def verify_fold_file(cfg: dict, side: str, root: str | Path | None, run: str | Path) -> str | None:
    """Checks the fold file a fold run `run` (its config `cfg`) trained (`side="train"`) or
    validated (`"val"`) on, as found under `root` (default: its data.root) now. Raises
    FoldFileChanged, one line naming the file and the fix, when its content changed; returns a
    warning line when the run has no record (trained before trashseg recorded them); None when
    the file is the recorded one or the run is not a fold run."""
    data = cfg["data"]
    if data.get("fold") is None:
        return None
    root = Path(root or data["root"])
    ann = run_annotation(data, side, root)
    path = root / ann
    recorded = (cfg.get(RECORD_KEY) or {}).get(side)
    if recorded is None:
        return (f"warning: {run} records no fold files (trained before trashseg recorded them), so {path} could not be "
                "verified as the file it was trained on; retrain the fold to make its score trustworthy")
    digest = sha256_of(path)
    if digest != recorded["sha256"]:
        images = len(read_coco(path)["images"])
        raise FoldFileChanged(
            f"{path} changed since {run} was trained ({recorded['images']} images, sha256 {recorded['sha256'][:12]} then; "
            f"{images} images, sha256 {digest[:12]} now), so its {side} images are not the ones the model "
            f"{'trained' if side == 'train' else 'validated'} on; retrain fold {data['fold']} on these files, or restore "
            "the fold files it was trained on")
    return None
