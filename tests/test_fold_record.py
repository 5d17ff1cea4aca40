"""The fold record of a fold run (data.fold_record): what it holds, and the checks against it."""

import hashlib
import json
from pathlib import Path

import pytest

from trashseg.data.fold_record import FoldFileChanged, record_folds, resumed_record, verify_fold_file


def coco(*ids: int) -> str:
    return json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg", "height": 4, "width": 4} for i in ids],
                       "annotations": [], "categories": []})


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "folds").mkdir()
    (tmp_path / "folds" / "fold0_train.json").write_text(coco(1, 2))
    (tmp_path / "folds" / "fold0_val.json").write_text(coco(3))
    return tmp_path


def fold_cfg(root: Path) -> dict:
    return {"data": {"root": str(root), "fold": 0, "folds_dir": "folds"}}


def test_the_record_holds_each_fold_file_hash_and_image_count(root):
    record = record_folds(fold_cfg(root)["data"])
    train_bytes = (root / "folds" / "fold0_train.json").read_bytes()
    val_bytes = (root / "folds" / "fold0_val.json").read_bytes()
    assert record == {"train": {"file": "folds/fold0_train.json", "sha256": hashlib.sha256(train_bytes).hexdigest(), "images": 2},
                      "val": {"file": "folds/fold0_val.json", "sha256": hashlib.sha256(val_bytes).hexdigest(), "images": 1}}
    assert record_folds({"root": str(root), "fold": None}) is None  # not a fold run


def test_an_unchanged_file_passes_and_a_changed_one_is_one_line_naming_it(root, tmp_path):
    cfg = {**fold_cfg(root), "fold_record": record_folds(fold_cfg(root)["data"])}
    assert verify_fold_file(cfg, "val", None, "runs/x/0") is None and verify_fold_file(cfg, "train", None, "runs/x/0") is None
    # regenerated: image 2 moved from train to val
    (root / "folds" / "fold0_val.json").write_text(coco(2, 3))
    with pytest.raises(FoldFileChanged) as changed:
        verify_fold_file(cfg, "val", None, "runs/x/0")
    message = str(changed.value)
    assert "\n" not in message and message.startswith(f"{root / 'folds' / 'fold0_val.json'} changed since runs/x/0 was trained")
    assert "(1 images, sha256" in message and "; 2 images, sha256" in message
    assert message.endswith("retrain fold 0 on these files, or restore the fold files it was trained on")
    # the same files under another data root (--data-root) are checked there
    other = tmp_path / "copy"
    (other / "folds").mkdir(parents=True)
    (other / "folds" / "fold0_val.json").write_text(coco(3))
    (other / "folds" / "fold0_train.json").write_text(coco(1, 2))
    assert verify_fold_file(cfg, "val", other, "runs/x/0") is None


def test_a_run_without_a_record_gets_a_warning_and_a_plain_run_nothing(root):
    warning = verify_fold_file(fold_cfg(root), "val", None, "runs/old/0")
    assert warning.startswith("warning: runs/old/0 records no fold files") and "\n" not in warning
    assert f"{root / 'folds' / 'fold0_val.json'} could not be verified" in warning
    assert verify_fold_file({"data": {"root": str(root), "fold": None, "val_ann": "val.json"}}, "val", None, "r") is None


def test_a_resume_keeps_the_record_and_refuses_fold_files_changed_since_the_start(root):
    started = record_folds(fold_cfg(root)["data"])
    assert resumed_record(record_folds(fold_cfg(root)["data"]), started, root, Path("last.ckpt")) is started
    (root / "folds" / "fold0_train.json").write_text(coco(1))
    with pytest.raises(FoldFileChanged, match=r"resuming last.ckpt: .*fold0_train.json changed since the run started "
                                              r"\(2 images then, 1 now\); restore the fold files"):
        resumed_record(record_folds(fold_cfg(root)["data"]), started, root, Path("last.ckpt"))
    # a run started before records stays without one (its resume check sees no change)
    assert resumed_record(record_folds(fold_cfg(root)["data"]), None, root, Path("last.ckpt")) is None
