"""k-fold guarantee, as documented in trashseg.data.kfold: folds partition the images, a group
never straddles a fold, and a class held by >= `folds` units is in every fold's val (or the
split warns, and only when no split can do it, which these tests check by brute force)."""

import itertools
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trashseg.data.kfold import _spread_rare_classes, assign_folds, make_folds, split_coco

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def holders_per_fold(unit_fold: np.ndarray, presence: np.ndarray, folds: int) -> np.ndarray:
    counts = np.zeros((folds, presence.shape[1]), dtype=np.int64)
    np.add.at(counts, unit_fold, presence)
    return counts


def gaps_of(unit_fold: np.ndarray, presence: np.ndarray, folds: int) -> set[tuple[int, int]]:
    """(class, fold) pairs where a class with >= folds holders has none in that fold."""
    counts = holders_per_fold(unit_fold, presence, folds)
    return {(c, f) for c in np.flatnonzero(presence.sum(0) >= folds) for f in range(folds) if counts[f, c] == 0}


def some_split_has_no_gap(presence: np.ndarray, folds: int) -> bool:
    """Brute force over every assignment of units to folds."""
    every = np.array(list(itertools.product(range(folds), repeat=len(presence))))
    one_hot = (every[:, :, None] == np.arange(folds)).astype(np.int64)  # splits x units x folds
    counts = np.einsum("suf,uc->sfc", one_hot, presence[:, presence.sum(0) >= folds])
    return bool((counts > 0).all((1, 2)).any())


def test_repair_never_takes_a_fold_last_holder_of_a_class_repaired_before():
    # issue 21's case: fixing class 1 (fold 1 lacks it) by moving unit 0 took fold 0's only class-0 holder
    presence = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]])
    unit_fold = np.array([0, 1, 0, 0])
    assert _spread_rare_classes(unit_fold, presence, 2) == ([], False)
    counts = holders_per_fold(unit_fold, presence, 2)
    assert counts[:, 0].tolist() == [1, 1] and counts[:, 1].min() >= 1
    assert unit_fold[:2].tolist() == [0, 1]  # class 0's two holders stay apart


@st.composite
def problems(draw):
    folds = draw(st.integers(2, 3))
    units = draw(st.integers(folds, 8 if folds == 2 else 7))
    classes = draw(st.integers(1, 5))
    presence = np.array(draw(st.lists(st.lists(st.integers(0, 1), min_size=classes, max_size=classes),
                                      min_size=units, max_size=units)), dtype=np.int64)
    start = np.array(draw(st.lists(st.integers(0, folds - 1), min_size=units, max_size=units)), dtype=np.int64)
    return presence, start, folds


@SETTINGS
@given(problems())
def test_repair_from_any_start_meets_the_guarantee_unless_no_split_can(problem):
    presence, unit_fold, folds = problem
    gaps, proven = _spread_rare_classes(unit_fold, presence, folds)
    assert set(gaps) == gaps_of(unit_fold, presence, folds)  # what it reports is what is left
    if gaps:
        assert proven and not some_split_has_no_gap(presence, folds)
    assert unit_fold.min() >= 0 and unit_fold.max() < folds


@st.composite
def datasets(draw):
    """A COCO dict of video frames: group g's frames are vid_g_frame_i; each frame holds some classes."""
    folds = draw(st.integers(2, 4))
    groups = draw(st.integers(folds, 9))
    frames = draw(st.lists(st.integers(1, 3), min_size=groups, max_size=groups))
    classes = draw(st.integers(1, 4))
    images, annotations = [], []
    for g, n in enumerate(frames):
        for i in range(n):
            image_id = 10 * len(images) + 7  # ids neither contiguous nor in file-name order
            images.append({"id": image_id, "file_name": f"vid_{g}_frame_{i}.jpg", "height": 4, "width": 4})
            for c in draw(st.lists(st.integers(1, classes), max_size=classes, unique=True)):
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": c})
    categories = [{"id": c, "name": f"class {c}"} for c in range(1, classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, folds, draw(st.integers(0, 3))


@SETTINGS
@given(datasets())
def test_folds_partition_images_keep_groups_whole_and_cover_classes(problem):
    from trashseg.data.kfold import class_presence, unit_keys

    coco, folds, seed = problem
    presence, _ = class_presence(coco)
    units = unit_keys([im["file_name"] for im in coco["images"]], r"vid_\d+")
    image_fold, gaps, proven = assign_folds(presence, units, folds, seed)
    all_ids = [im["id"] for im in coco["images"]]
    val_ids = []
    for k in range(folds):
        train, val = split_coco(coco, image_fold, k)
        train_ids, fold_val = [im["id"] for im in train["images"]], [im["id"] for im in val["images"]]
        assert not set(train_ids) & set(fold_val) and sorted(train_ids + fold_val) == sorted(all_ids)
        video = {im["file_name"].split("_frame")[0] for im in val["images"]}
        assert not video & {im["file_name"].split("_frame")[0] for im in train["images"]}  # no group split
        val_ids += fold_val
    assert sorted(val_ids) == sorted(all_ids)  # every image in exactly one fold's val
    # the guarantee, counted in groups (units) by hand from the annotations
    group_classes: dict[str, set[int]] = {}
    group_fold: dict[str, int] = {}
    for im, f in zip(coco["images"], image_fold):
        group = im["file_name"].split("_frame")[0]
        group_fold[group] = int(f)
        group_classes.setdefault(group, set()).update(a["category_id"] for a in coco["annotations"]
                                                      if a["image_id"] == im["id"])
    names = sorted(group_classes)
    unit_presence = np.array([[c in group_classes[g] for c in range(1, len(coco["categories"]) + 1)] for g in names],
                             dtype=np.int64)
    left = gaps_of(np.array([group_fold[g] for g in names]), unit_presence, folds)
    assert set(gaps) == left
    if left:
        assert proven and not some_split_has_no_gap(unit_presence, folds)


def test_a_split_no_repair_can_satisfy_is_one_warning_line(tmp_path):
    # three images, each pair shares a class: with 2 folds one pair always lands in one fold
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 4, "width": 4} for i in range(3)]
    pairs = {0: (1, 2), 1: (1, 3), 2: (2, 3)}
    annotations = [{"id": 10 * i + c, "image_id": i, "category_id": c} for i, cs in pairs.items() for c in cs]
    categories = [{"id": c, "name": name} for c, name in ((1, "Paper"), (2, "Metal"), (3, "Glass"))]
    (tmp_path / "all.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": categories}))
    text = make_folds(tmp_path, "all.json", 2, tmp_path / "folds")
    warning = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no split can avoid it" in warning[0]
    assert any(f"{name} from fold" in warning[0] for name in ("Paper", "Metal", "Glass"))
    assert len(list((tmp_path / "folds").glob("fold*_val.json"))) == 2  # the folds are still written
