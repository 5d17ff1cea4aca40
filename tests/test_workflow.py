"""The competition workflow: folds -> fold sweep -> OOF score -> fold ensemble -> pseudo-labels -> retraining."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from trashseg.data import CocoSegmentationDataset
from trashseg.data.check import check_dataset
from trashseg.data.datamodule import TrashDataModule
from trashseg.data.kfold import _spread_rare_classes, make_folds, run_annotation
from trashseg.data.kfold import main as kfold
from trashseg.inference import Predictor, load_checkpoint
from trashseg.inference.command import main as inference
from trashseg.inference.loop import build_dataset
from trashseg.inference.oof import main as oof
from trashseg.inference.pseudo import main as pseudo
from trashseg.metric import confusion_matrix
from trashseg.tools.export import main as export
from trashseg.training import run as run_module
from trashseg.training.run_config import plain_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FOLDS = 3


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def train_config(root: Path, tmp: Path, *overrides: str):
    base = ["experiment=quickstart", f"data.root={root}", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=3",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=csv", f"runs_dir={tmp / 'runs'}",
            "model.decoder.decoder_channels=[32,16,16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))


@pytest.fixture(scope="module")
def pool(synthetic_root, tmp_path_factory) -> Path:
    """A copy of the synthetic dataset with 3 folds of train_all (34 images)."""
    root = tmp_path_factory.mktemp("pool") / "data"
    shutil.copytree(synthetic_root, root)
    make_folds(root, "train_all.json", FOLDS, root / "folds", seed=0)
    return root


@pytest.fixture(scope="module")
def sweep(pool, tmp_path_factory) -> Path:
    """One short run per fold in one sweep folder, as `train.py -m ... data.fold=0,1,2` makes."""
    sweep_dir = tmp_path_factory.mktemp("multirun") / "sweep"
    for fold in range(FOLDS):
        run_module.train(train_config(pool, sweep_dir, f"data.fold={fold}"), sweep_dir / str(fold))
    return sweep_dir


# ---------------------------------------------------------------- folds

def test_folds_partition_the_pool_and_keep_every_category(pool):
    source = read(pool / "train_all.json")
    all_ids = sorted(im["id"] for im in source["images"])
    val_ids = []
    for k in range(FOLDS):
        train, val = read(pool / "folds" / f"fold{k}_train.json"), read(pool / "folds" / f"fold{k}_val.json")
        train_ids, fold_val = {im["id"] for im in train["images"]}, {im["id"] for im in val["images"]}
        assert not train_ids & fold_val and sorted(train_ids | fold_val) == all_ids
        assert train["categories"] == val["categories"] == source["categories"]  # unused ones too
        for part, ids in ((train, train_ids), (val, fold_val)):  # each image keeps exactly its own annotations
            expected = sorted(a["id"] for a in source["annotations"] if a["image_id"] in ids)
            assert sorted(a["id"] for a in part["annotations"]) == expected
        val_ids += fold_val
    assert sorted(val_ids) == all_ids  # every image is in exactly one val fold
    # every class held by at least FOLDS images is in every fold's val
    for cat in source["categories"]:
        holders = {a["image_id"] for a in source["annotations"] if a["category_id"] == cat["id"]}
        if len(holders) >= FOLDS:
            for k in range(FOLDS):
                val = read(pool / "folds" / f"fold{k}_val.json")
                assert any(a["category_id"] == cat["id"] for a in val["annotations"]), (cat["name"], k)


def test_rare_class_repair_moves_a_holder_into_each_empty_fold():
    # class 0 is held by units 0, 1, 2, all in fold 0; class 1 by everyone
    unit_fold = np.array([0, 0, 0, 1, 1, 2])
    presence = np.array([[1, 1], [1, 1], [1, 1], [0, 1], [0, 1], [0, 1]])
    _spread_rare_classes(unit_fold, presence, 3)
    assert sorted(unit_fold[:3]) == [0, 1, 2] and list(unit_fold[3:]) == [1, 1, 2]


@pytest.mark.shared_data
def test_video_groups_never_straddle_a_fold(shared_data, tmp_path):
    root = shared_data / "trashcan"
    make_folds(root, "train/annotations.json", 3, tmp_path, seed=0, group_by=r"vid_\d+")
    videos = []
    for k in range(3):
        val = read(tmp_path / f"fold{k}_val.json")
        videos.append({im["file_name"].split("_frame")[0] for im in val["images"]})
        train = read(tmp_path / f"fold{k}_train.json")
        assert not videos[-1] & {im["file_name"].split("_frame")[0] for im in train["images"]}
        clothing = next(c["id"] for c in val["categories"] if c["name"] == "Clothing")
        assert any(a["category_id"] == clothing for a in val["annotations"])
    source = read(root / "train" / "annotations.json")
    assert sum(map(len, videos)) == len(set().union(*videos)) == len({im["file_name"].split("_frame")[0] for im in source["images"]})


def test_existing_folds_are_not_overwritten(pool):
    with pytest.raises(FileExistsError, match="already holds fold files.*--force"):
        make_folds(pool, "train_all.json", FOLDS, pool / "folds")


def test_bad_fold_index_or_missing_fold_file_is_one_clear_line(pool, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fold 7: .*fold7_train.json not found \(folds there: 0, 1, 2\); make folds with"):
        TrashDataModule(pool, fold=7)
    with pytest.raises(ValueError, match="data.fold must be a fold index"):
        TrashDataModule(pool, fold=-1)
    with pytest.raises(FileNotFoundError, match="no fold files there"):
        run_module.train(train_config(pool, tmp_path, "data.fold=0", "data.folds_dir=nowhere"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # stopped before any run folder


# ---------------------------------------------------------------- out-of-fold score

def fold_confusion_by_hand(run: Path, pool: Path, fold: int) -> torch.Tensor:
    ckpt = load_checkpoint(run / "checkpoints" / "best.ckpt")
    ds = CocoSegmentationDataset(pool, f"folds/fold{fold}_val.json", mode="val")
    predictor, total = Predictor([ckpt]), torch.zeros(11, 11, dtype=torch.long)
    for i in range(len(ds)):
        item = ds[i]
        total += confusion_matrix(predictor.predict(item["image"][None])[0], item["mask"], 11)
    return total


def test_oof_confusion_is_the_sum_of_the_fold_confusions(sweep, pool, tmp_path):
    # batch 1, as the hand count: a batch of another size may flip near-tie pixels of a one-epoch model
    assert oof([str(sweep), "--num-workers", "0", "--batch-size", "1", "--worst", "4", "--out", str(tmp_path)]) == 0
    report = read(tmp_path / "oof.json")
    expected = sum(fold_confusion_by_hand(sweep / str(k), pool, k) for k in range(FOLDS))
    assert torch.equal(torch.tensor(report["confusion"]), expected)
    assert report["images"] == len(read(pool / "train_all.json")["images"])
    # each fold's score is what its training run logged on the same val images (batch 3 there: a
    # near-tie pixel may flip, which moves an IoU by ~1e-4)
    for fold in report["folds"]:
        assert fold["mIoU"] == pytest.approx(fold["logged_val_mIoU"], abs=2e-3)
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    assert sorted(per_image["id"]) == sorted(im["id"] for im in read(pool / "train_all.json")["images"])
    assert per_image["mIoU"].is_monotonic_increasing and set(per_image["fold"]) == {0, 1, 2}
    assert (tmp_path / "worst.png").stat().st_size > 0 and "CV mIoU" in (tmp_path / "oof.md").read_text()


def test_oof_refuses_a_sweep_with_a_missing_or_unfinished_fold(sweep, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial, ignore=shutil.ignore_patterns("oof"))
    shutil.rmtree(partial / "2")
    assert oof([str(partial), "--num-workers", "0"]) == 1
    assert "no run of fold 2 of the 3" in capsys.readouterr().err
    (partial / "1" / "checkpoints" / "best.ckpt").unlink()
    assert oof([str(partial), "--num-workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "has no checkpoints/best.ckpt" in err and err.count("\n") == 1


# ---------------------------------------------------------------- fold records

def test_a_fold_run_records_its_fold_files_in_config_and_checkpoint(sweep, pool):
    for k in range(FOLDS):
        saved = yaml.safe_load((sweep / str(k) / "config.yaml").read_text())["fold_record"]
        ckpt = torch.load(sweep / str(k) / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
        assert ckpt["hyper_parameters"]["cfg"]["fold_record"] == saved
        for side in ("train", "val"):
            path = pool / "folds" / f"fold{k}_{side}.json"
            assert saved[side] == {"file": f"folds/fold{k}_{side}.json", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "images": len(read(path)["images"])}


@pytest.fixture
def regenerated(pool, tmp_path) -> Path:
    """A copy of the pool whose folds were made again with another seed and --force, as kfold's
    own refusal suggests, after the sweep trained on the first ones."""
    root = tmp_path / "data"
    shutil.copytree(pool, root)
    assert kfold(["--root", str(root), "--ann", "train_all.json", "--folds", str(FOLDS), "--seed", "1", "--force"]) == 0
    for side in ("train", "val"):
        assert (root / "folds" / f"fold0_{side}.json").read_bytes() != (pool / "folds" / f"fold0_{side}.json").read_bytes()
    return root


def _refusal(capsys, name: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{name} changed since" in err and "retrain fold 0" in err and "restore the fold files" in err, err
    return err


def test_every_consumer_refuses_a_fold_file_regenerated_since_training(sweep, pool, regenerated, tmp_path, capsys):
    best = str(sweep / "0" / "checkpoints" / "best.ckpt")
    common = ["--data-root", str(regenerated), "--num-workers", "0"]
    assert oof([str(sweep), *common, "--out", str(tmp_path / "oof")]) == 1
    _refusal(capsys, "fold0_val.json")
    assert not (tmp_path / "oof").exists()
    assert inference(["--checkpoint", best, "--split", "val", *common, "--out", str(tmp_path / "val.json")]) == 1
    _refusal(capsys, "fold0_val.json")
    assert pseudo(["--checkpoint", best, "--split", "val", *common, "--out", str(tmp_path / "pseudo.json")]) == 1
    _refusal(capsys, "fold0_val.json")
    assert export(["--checkpoint", best, "--data-root", str(regenerated), "--out", str(tmp_path / "m.onnx")]) == 1
    _refusal(capsys, "fold0_val.json")
    # calibration images come from the run's train file (check images here from a plain file)
    assert export(["--checkpoint", best, "--data-root", str(regenerated), "--ann", "val.json", "--quantize", "int8",
                   "--out", str(tmp_path / "m.onnx")]) == 1
    _refusal(capsys, "fold0_train.json")
    assert not (tmp_path / "val.json").exists() and not (tmp_path / "pseudo.json").exists() and not (tmp_path / "m.onnx").exists()
    # the test split reads no fold file: still served
    assert inference(["--checkpoint", best, "--split", "test", *common, "--out", str(tmp_path / "test.csv")]) == 0
    # the fold files restored: the sweep scores again, without a warning
    shutil.rmtree(regenerated / "folds")
    shutil.copytree(pool / "folds", regenerated / "folds")
    capsys.readouterr()
    assert oof([str(sweep), *common, "--out", str(tmp_path / "oof")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_fold_run_without_a_record_scores_with_one_warning(sweep, pool, tmp_path, capsys):
    old = tmp_path / "old_sweep"
    shutil.copytree(sweep, old, ignore=shutil.ignore_patterns("oof"))
    for k in range(FOLDS):  # as runs trained before fold files were recorded
        config = old / str(k) / "config.yaml"
        config.write_text(yaml.safe_dump({k2: v for k2, v in yaml.safe_load(config.read_text()).items() if k2 != "fold_record"},
                                         sort_keys=False))
        path = old / str(k) / "checkpoints" / "best.ckpt"
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        del ckpt["hyper_parameters"]["cfg"]["fold_record"]
        torch.save(ckpt, path)
    assert oof([str(old), "--num-workers", "0", "--out", str(tmp_path / "oof")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "fold runs 0, 1, 2" in warnings[0] and "could not be verified" in warnings[0]
    assert inference(["--checkpoint", str(old / "0" / "checkpoints" / "best.ckpt"), "--split", "val", "--num-workers", "0",
                      "--out", str(tmp_path / "val.json")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "fold0_val.json could not be verified" in warnings[0]


def test_checkpoints_from_a_sweep_equals_naming_every_checkpoint(sweep, pool, tmp_path):
    common = ["--split", "test", "--num-workers", "0", "--data-root", str(pool)]
    named = [arg for k in range(FOLDS) for arg in ("--checkpoint", str(sweep / str(k) / "checkpoints" / "best.ckpt"))]
    assert inference([*named, *common, "--out", str(tmp_path / "named.csv")]) == 0
    assert inference(["--checkpoints-from", str(sweep), *common, "--out", str(tmp_path / "sweep.csv")]) == 0
    assert (tmp_path / "named.csv").read_bytes() == (tmp_path / "sweep.csv").read_bytes()


def test_a_fold_run_validates_on_its_own_fold(sweep, pool):
    """inference.py --split val, export's check images and the pseudo-labeller's categories follow
    the run's fold, not the data config's plain val_ann (which would hold the fold's train images)."""
    ckpt = load_checkpoint(sweep / "1" / "checkpoints" / "best.ckpt")
    dataset = build_dataset(ckpt.cfg, "val", ckpt.classes, pool)
    assert [int(dataset[i]["id"]) for i in range(len(dataset))] == [im["id"] for im in read(pool / "folds" / "fold1_val.json")["images"]]
    assert run_annotation(ckpt.cfg["data"], "train", pool) == Path("folds") / "fold1_train.json"


# ---------------------------------------------------------------- pseudo-labels

@pytest.fixture(scope="module")
def pseudo_labels(sweep, pool, tmp_path_factory):
    """Pseudo-labels of the test images by the fold ensemble, with a threshold that leaves both
    confident and unconfident pixels, and the ensemble's own probabilities to check them against."""
    predictor = Predictor([load_checkpoint(sweep / str(k) / "checkpoints" / "best.ckpt") for k in range(FOLDS)])
    test = CocoSegmentationDataset(pool, "test.json", mode="test")
    probs = {int(test[i]["id"]): predictor.probs(test[i]["image"][None])[0] for i in range(len(test))}
    confidence = torch.stack([p.max(0).values for p in probs.values()])
    threshold = float(confidence.median())
    image_threshold = float(confidence.mean((1, 2)).sort().values[:2].mean())  # leaves out exactly one image
    out = tmp_path_factory.mktemp("pseudo") / "test_pseudo.json"
    assert pseudo(["--checkpoints-from", str(sweep), "--split", "test", "--data-root", str(pool), "--out", str(out),
                   "--min-confidence", str(threshold), "--min-image-confidence", str(image_threshold),
                   "--num-workers", "0", "--batch-size", "1"]) == 0  # batch 1: the very computation above
    return out, probs, threshold


def test_pseudo_labels_decode_to_the_argmax_with_255_where_unconfident(pseudo_labels, pool):
    out, probs, threshold = pseudo_labels
    coco = read(out)
    assert len(coco["images"]) == len(probs) - 1  # the least confident image is left out
    by_id = lambda cats: sorted(cats, key=lambda c: c["id"])  # noqa: E731
    assert by_id(coco["categories"]) == by_id(read(pool / "train.json")["categories"])  # the training JSON's ids and names
    assert all(isinstance(a["segmentation"]["counts"], str) for a in coco["annotations"])  # compressed RLE
    ds = CocoSegmentationDataset(out.parent, out.name, mode="train", crowd="ignore", cache_dir=False)
    ds.image_root = pool  # file names stay relative to the data root
    n_unsure = 0
    for i in range(len(ds)):
        confidence, labels = probs[int(ds.ids[i])].max(0)
        expected = torch.where(confidence >= threshold, labels, torch.tensor(255)).to(torch.uint8).numpy()
        np.testing.assert_array_equal(ds.mask(i), expected)
        n_unsure += int((expected == 255).sum())
    assert n_unsure > 0
    report = check_dataset(pool, out)
    assert report.ok and report.images == len(coco["images"])


def test_a_model_trained_on_train_plus_pseudo_labels_validates(pseudo_labels, pool, tmp_path):
    out, _, _ = pseudo_labels
    extra = f"data.extra_train=[{{ann:{out},crowd:ignore}}]"
    cfg = train_config(pool, tmp_path, extra)
    datamodule = TrashDataModule(**plain_config(cfg)["data"], augment=None)
    assert len(datamodule.dataset("train")) == len(read(pool / "train.json")["images"]) + len(read(out)["images"])
    metrics = run_module.train(cfg, tmp_path / "run")
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


def test_a_test_split_as_extra_source_is_refused(pool):
    with pytest.raises(ValueError, match=r"extra_train\[0\]: .*test.json has no annotations"):
        TrashDataModule(pool, extra_train=[{"ann": "test.json"}])
