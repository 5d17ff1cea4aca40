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

from .coco import annotation_bytes, parse_coco, read_coco
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
    raw = annotation_bytes(path)  # read once: hashed and parsed
    return {"file": str(ann), "sha256": hashlib.sha256(raw).hexdigest(), "images": len(parse_coco(raw, path)["images"])}


def record_folds(data: dict) -> dict | None:
    """The record of a fold run's train and val files (`data.fold` set), and of its extra training
    sources (a pseudo-label round: the images it adds to the fold's); None for other runs."""
    if data.get("fold") is None:
        return None
    files = fold_annotations(data["root"], data.get("folds_dir", "folds"), data["fold"])
    record = {side: file_record(data["root"], ann) for side, ann in zip(SIDES, files)}
    extra = data.get("extra_train") or []
    if extra:
        record["extra_train"] = [file_record(source.get("root") or data["root"], source["ann"]) for source in extra]
    return record


def _recorded_files(record: dict) -> list[tuple[str, dict]]:
    """(name, {file, sha256, images}) of each file in a record: train, val, extra_train[i]."""
    files = [(side, record[side]) for side in SIDES if side in record]
    return files + [(f"extra_train[{i}]", entry) for i, entry in enumerate(record.get("extra_train", []))]


def resumed_record(now: dict | None, started: dict | None, root: str | Path, checkpoint: Path) -> dict | None:
    """The record a resumed run keeps: the one it started with (`started`; a run started before
    records stays unverified). Files whose content changed since (`now`, recorded today) are refused:
    the rest of the run would train on other images than its first part."""
    if started is None or now is None:
        return started
    current = dict(_recorded_files(now))
    for name, entry in _recorded_files(started):
        if name in current and entry["sha256"] != current[name]["sha256"]:
            raise FoldFileChanged(
                f"resuming {checkpoint}: {Path(root) / entry['file']} changed since the run started "
                f"({entry['images']} images then, {current[name]['images']} now); restore the "
                f"{'fold files' if name in SIDES else 'file'} it started on, or start a new run without resume=")
    return started


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
