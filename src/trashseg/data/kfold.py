"""Stratified k-fold splits of a COCO file, for an out-of-fold score over all labelled images.

    python -m trashseg.data.kfold --root DIR --ann train_all.json --folds 5 --seed 0 --out DIR/folds \
        [--group-by 'vid_\\d+']

writes `fold{k}_train.json` / `fold{k}_val.json`: valid COCO files with every category of the
source (even unused ones), ids and file names unchanged. The split is multilabel-stratified
on which classes each image contains (iterative stratification, Sechidis et al. 2011, from the
`iterative-stratification` package). With `--group-by`, images whose file names give the same
match (the frames of one video) are one unit: they never land on both sides of a fold. A class
present in at least `folds` units appears in every fold's val (moved there if stratification
left a fold without it, never at the cost of another such class), or, where no split can do
that (units that hold each other's rare classes), the command says so in one warning line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

from trashseg.errors import run_or_report

from .coco import read_coco

FOLD_FILE = "fold{fold}_{side}.json"
KFOLD_COMMAND = "python -m trashseg.data.kfold --root DATA_ROOT --ann train_all.json --folds 5 --out DATA_ROOT/folds"


def fold_annotations(root: str | Path, folds_dir: str | Path, fold: int) -> tuple[Path, Path]:
    """(train, val) annotation files of fold `fold`, relative to `root` (`folds_dir` may be
    absolute); one clear line when the index is wrong or the files are missing."""
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise ValueError(f"data.fold must be a fold index 0, 1, ...; got {fold!r}")
    folder = Path(root) / folds_dir
    paths = tuple(Path(folds_dir) / FOLD_FILE.format(fold=fold, side=side) for side in ("train", "val"))
    missing = [folder / p.name for p in paths if not (folder / p.name).is_file()]
    if missing:
        available = sorted(int(m.group(1)) for p in folder.glob("fold*_val.json")
                           if (m := re.fullmatch(r"fold(\d+)_val\.json", p.name)))
        have = f"folds there: {', '.join(map(str, available))}" if available else "no fold files there"
        raise FileNotFoundError(f"fold {fold}: {missing[0]} not found ({have}); make folds with: {KFOLD_COMMAND} "
                                "or point data.folds_dir at them")
    return paths


def run_annotation(data: dict, side: str, root: str | Path | None = None) -> str | Path:
    """The annotation file a run trained (`side="train"`) or validated (`"val"`) on: its fold's
    file for a fold run (`data.fold`), else `data.train_ann` / `data.val_ann`."""
    if data.get("fold") is None:
        return data[f"{side}_ann"]
    train, val = fold_annotations(root or data["root"], data.get("folds_dir", "folds"), data["fold"])
    return val if side == "val" else train


def unit_keys(file_names: list[str], group_by: str | None) -> list[str]:
    """The unit of each image: its own file name, or the REGEX match (first group if any)."""
    if not group_by:
        return list(file_names)
    pattern = re.compile(group_by)
    keys = []
    for name in file_names:
        match = pattern.search(name)
        if match is None:
            raise ValueError(f"--group-by {group_by!r} does not match the file name {name!r}; "
                             "give a regular expression that every file name contains")
        keys.append(match.group(1) if pattern.groups else match.group(0))
    return keys


def class_presence(coco: dict) -> tuple[np.ndarray, list[str]]:
    """images x categories 0/1: which categories each image contains (JSON order of both)."""
    column = {c["id"]: j for j, c in enumerate(coco["categories"])}
    row = {im["id"]: i for i, im in enumerate(coco["images"])}
    presence = np.zeros((len(row), len(column)), dtype=np.int64)
    for ann in coco.get("annotations", []):
        presence[row[ann["image_id"]], column[ann["category_id"]]] = 1
    return presence, [c["name"] for c in coco["categories"]]


def assign_folds(presence: np.ndarray, units: list[str], folds: int,
                 seed: int) -> tuple[np.ndarray, list[tuple[int, int]], bool]:
    """Fold index per image: iterative stratification over units, then rare-class repair; with
    the (class column, fold) pairs the repair left without a holder and whether that is proven
    unavoidable (see `_spread_rare_classes`)."""
    names, unit_of = np.unique(np.array(units), return_inverse=True)
    if len(names) < folds:
        raise ValueError(f"{len(names)} images/groups cannot make {folds} folds; use --folds {max(len(names), 2)} or fewer")
    unit_presence = np.zeros((len(names), presence.shape[1]), dtype=np.int64)
    np.maximum.at(unit_presence, unit_of, presence)
    unit_fold = np.empty(len(names), dtype=np.int64)
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports scikit-learn: only when splitting

    splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # a constant extra column: with one category the labels would look binary, which it refuses
    labels = np.pad(unit_presence, ((0, 0), (0, 1)))
    for k, (_, val) in enumerate(splitter.split(np.zeros((len(names), 1)), labels)):
        unit_fold[val] = k
    gaps, proven = _spread_rare_classes(unit_fold, unit_presence, folds)
    return unit_fold[unit_of], gaps, proven


def gaps_line(gaps: list[tuple[int, int]], proven: bool, names: list[str], folds: int) -> str:
    """One line naming the classes a fold's val lacks although they have enough holders."""
    missing = ", ".join(f"{names[c]} from fold {f}'s val" for c, f in gaps)
    why = ("no split can avoid it: their images hold each other's classes" if proven
           else "the repair's search gave up; try another --seed")
    return (f"warning: classes held by >= {folds} images/groups are missing: {missing} ({why}); "
            "that fold's val score has no ground truth of them, the OOF score (all folds) still has")


def _spread_rare_classes(unit_fold: np.ndarray, unit_presence: np.ndarray, folds: int) -> tuple[list[tuple[int, int]], bool]:
    """Every class held by >= `folds` units gets into every fold's val, in place: while a fold
    lacks such a class, a unit holding it moves there from another fold (or, when no move is
    possible, trades places with a unit of that fold). A change is made only if it leaves no
    fold without a class it had, so every step fills a gap and none opens one: the repair ends.
    When it ends with gaps, an exhaustive search (bounded) looks for any assignment that has none.
    Returns the (class, fold) gaps left, and whether the search proved that none can be filled."""
    rare = np.flatnonzero(unit_presence.sum(0) >= folds)
    holds = unit_presence[:, rare].astype(np.int64)  # units x guaranteed classes
    busy = unit_presence.sum(1)  # the units holding fewest classes move first: stratification changes least
    while True:
        counts = np.zeros((folds, len(rare)), dtype=np.int64)  # holders of each class per fold
        np.add.at(counts, unit_fold, holds)
        gaps = _rarest_first(np.argwhere(counts == 0), holds)
        if not gaps:
            return [], False
        if not any(_fill_gap(unit_fold, holds, counts, busy, f, c) for c, f in gaps):
            break
    found, proven = _search_cover(holds, folds, unit_fold)
    if found is not None:
        unit_fold[:] = found
        return [], False
    return [(int(rare[c]), int(f)) for c, f in gaps], proven


def _rarest_first(gaps: np.ndarray, holds: np.ndarray) -> list[tuple[int, int]]:
    """(class, fold) gaps, classes with the fewest holders first."""
    return sorted(((int(c), int(f)) for f, c in gaps), key=lambda cf: (holds[:, cf[0]].sum(), cf))


def _fill_gap(unit_fold: np.ndarray, holds: np.ndarray, counts: np.ndarray, busy: np.ndarray, fold: int,
              cls: int) -> bool:
    """Give `fold` a holder of class `cls` by one move or, failing that, one swap that takes no
    fold's last holder of any class; True if done."""
    movers = np.flatnonzero((holds[:, cls] == 1) & (unit_fold != fold))
    # a unit may leave its fold if that fold keeps another holder of every class the unit holds
    spare = (counts[unit_fold[movers]] >= 2) | (holds[movers] == 0)  # movers x classes
    safe = movers[spare.all(1)]
    if len(safe):
        donor_size = counts[unit_fold[safe], cls]  # take from the fold with most holders, then the least busy unit
        mover = safe[np.lexsort((safe, busy[safe], -donor_size))[0]]
        unit_fold[mover] = fold
        return True
    # a swap: the unit u comes in, a unit v of `fold` without `cls` goes to u's fold; after it,
    # u's fold and `fold` still need a holder of every class they had
    stay = np.flatnonzero((unit_fold == fold) & (holds[:, cls] == 0))
    stay = stay[np.lexsort((stay, busy[stay]))]
    for u in movers[np.lexsort((movers, busy[movers]))]:
        donor = unit_fold[u]
        donor_after = counts[donor] - holds[u] + holds[stay]  # stay x classes
        fold_after = counts[fold] + holds[u] - holds[stay]
        ok = ((donor_after >= 1) | (counts[donor] == 0)).all(1) & ((fold_after >= 1) | (counts[fold] == 0)).all(1)
        if ok.any():
            unit_fold[u], unit_fold[stay[ok.argmax()]] = fold, donor
            return True
    return False


def _search_cover(holds: np.ndarray, folds: int, unit_fold: np.ndarray,
                  limit: int = 200_000) -> tuple[np.ndarray | None, bool]:
    """Depth-first search for folds of the units that hold a guaranteed class (each unit tries
    its current fold first) such that every fold has a holder of every class: (the assignment or
    None, whether the search was exhaustive, i.e. within `limit` steps)."""
    units = np.flatnonzero(holds.any(1))
    # holders of the rarest class first (then the busiest): the tight constraints prune early
    rarest = np.where(holds[units] == 1, holds.sum(0), len(holds)).min(1)
    units = units[np.lexsort((-holds[units].sum(1), rarest))]
    counts = np.zeros((folds, holds.shape[1]), dtype=np.int64)
    left = holds[units].sum(0)  # holders of each class not placed yet
    choice = [[int(unit_fold[u])] + [f for f in range(folds) if f != unit_fold[u]] for u in units]
    tried = [0] * len(units)  # per depth: how many of its choices were taken
    depth, steps = 0, 0
    while depth >= 0:
        if depth == len(units):
            out = unit_fold.copy()
            out[units] = [choice[i][tried[i] - 1] for i in range(len(units))]
            return out, True
        u = units[depth]
        if tried[depth]:  # undo the previous choice at this depth
            counts[choice[depth][tried[depth] - 1]] -= holds[u]
        if tried[depth] == folds:
            tried[depth] = 0
            left += holds[u]
            depth -= 1
            continue
        if tried[depth] == 0:
            left -= holds[u]
        steps += 1
        if steps > limit:
            return None, False
        counts[choice[depth][tried[depth]]] += holds[u]
        tried[depth] += 1
        if ((counts == 0).sum(0) <= left).all():  # the units still to place can fill every gap
            depth += 1
    return None, True


def split_coco(coco: dict, image_fold: np.ndarray, fold: int) -> tuple[dict, dict]:
    """(train, val) COCO dicts of `fold`, keeping every other top-level key (categories, info)."""
    val_ids = {im["id"] for im, f in zip(coco["images"], image_fold) if f == fold}
    out = []
    for in_val in (False, True):
        images = [im for im in coco["images"] if (im["id"] in val_ids) == in_val]
        annotations = [a for a in coco.get("annotations", []) if (a["image_id"] in val_ids) == in_val]
        out.append({**coco, "images": images, "annotations": annotations})
    return out[0], out[1]


def fold_table(coco: dict, image_fold: np.ndarray, folds: int) -> str:
    """Per fold, its val images and objects per class (and the totals)."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    column = {c["id"]: j for j, c in enumerate(categories)}
    fold_of = {im["id"]: f for im, f in zip(coco["images"], image_fold)}
    objects = np.zeros((folds, len(names)), dtype=np.int64)
    for ann in coco.get("annotations", []):
        objects[fold_of[ann["image_id"]], column[ann["category_id"]]] += 1
    images = np.bincount(image_fold, minlength=folds)
    rows = [[f"fold {k} val", images[k], *objects[k]] for k in range(folds)]
    rows.append(["all", images.sum(), *objects.sum(0)])
    return "objects per class in each fold's val:\n" + tabulate(rows, headers=["", "images", *names], tablefmt="github")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def make_folds(root: str | Path, ann: str | Path, folds: int, out: str | Path, seed: int = 0,
               group_by: str | None = None, force: bool = False) -> str:
    """Write the fold files; returns the per-fold table."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    out = Path(out)
    existing = sorted(out.glob("fold*_*.json")) if out.is_dir() else []
    if existing and not force:
        raise FileExistsError(f"{out} already holds fold files ({existing[0].name}, ...); runs may have been trained on "
                              "them. Choose another --out or pass --force to replace them")
    coco = read_coco(Path(root) / ann)
    if not coco.get("categories"):
        raise ValueError(f"{Path(root) / ann} has no categories: not an annotated split (folds need labels)")
    presence, names = class_presence(coco)
    units = unit_keys([im["file_name"] for im in coco["images"]], group_by)
    image_fold, gaps, proven = assign_folds(presence, units, folds, seed)
    out.mkdir(parents=True, exist_ok=True)
    for stale in existing:
        stale.unlink()
    for k in range(folds):
        train, val = split_coco(coco, image_fold, k)
        _write_json(out / FOLD_FILE.format(fold=k, side="train"), train)
        _write_json(out / FOLD_FILE.format(fold=k, side="val"), val)
    table = fold_table(coco, image_fold, folds)
    return f"{table}\n{gaps_line(gaps, proven, names, folds)}" if gaps else table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Multilabel-stratified (optionally grouped) k-fold COCO splits.")
    parser.add_argument("--root", type=Path, required=True, help="data root (the JSON's file names are relative to it)")
    parser.add_argument("--ann", default="train_all.json", help="annotation file to split, relative to --root")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: ROOT/folds (the data config's folds_dir)")
    parser.add_argument("--group-by", help="regex on file_name; images with the same match stay in one fold "
                        r"(e.g. 'vid_\d+' for video frames)")
    parser.add_argument("--force", action="store_true", help="replace fold files already in --out")
    args = parser.parse_args(argv)
    out = args.out or args.root / "folds"

    def run() -> str:
        table = make_folds(args.root, args.ann, args.folds, out, args.seed, args.group_by, args.force)
        return f"{table}\nwrote {args.folds} folds to {out}: fold{{k}}_train.json / fold{{k}}_val.json"

    return run_or_report(run)


if __name__ == "__main__":
    sys.exit(main())
