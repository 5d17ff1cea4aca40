"""Pseudo-label traps: a pseudo file's unconfident regions read as a real class (crowd: label),
and the printed training command on data whose file names are relative to the annotation file
(TrashCan's layout)."""

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from trashseg.data.datamodule import TrashDataModule
from trashseg.data.pseudo_marker import MARKER
from trashseg.inference.pseudo import main as pseudo
from trashseg.training import run as run_module

REPO = Path(__file__).resolve().parents[1]
SMALL = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
         "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def trashcan_layout(src: Path, dst: Path) -> list[str]:
    """The synthetic data laid out as TrashCan is: <split>/annotations.json with file names
    `images/<frame>.jpg` relative to that JSON's folder, none relative to the data root. Returns
    the data overrides that read it."""
    for split in ("train", "val", "test"):
        coco = read(src / f"{split}.json")
        (dst / split / "images").mkdir(parents=True)
        for image in coco["images"]:
            name = "images/" + image["file_name"].replace("/", "_")
            shutil.copy(src / image["file_name"], dst / split / name)
            image["file_name"] = name
        (dst / split / "annotations.json").write_text(json.dumps(coco))
    return [f"data.root={dst}", "data.train_ann=train/annotations.json", "data.val_ann=val/annotations.json",
            "data.test_ann=test/annotations.json", "data.images_relative_to=ann"]


@pytest.fixture(scope="module")
def trashcan(synthetic_root, tmp_path_factory):
    """(data overrides, the pseudo-label file of its test images, the command the labeller printed)."""
    tmp = tmp_path_factory.mktemp("trashcan")
    layout = trashcan_layout(synthetic_root, tmp / "data")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMALL, *layout, f"runs_dir={tmp / 'runs'}"])
    run_module.train(cfg, tmp / "run")
    out = tmp / "data" / "pseudo" / "test_pseudo.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert pseudo(["--checkpoint", str(tmp / "run" / "checkpoints" / "best.ckpt"), "--split", "test",
                       "--out", str(out), "--num-workers", "0", "--min-confidence", "0.5"]) == 0
    command = printed.getvalue().split("Train on it with: ", 1)[1].strip()
    return layout, out, command


def test_the_printed_command_trains_on_a_layout_with_images_beside_the_annotations(trashcan, tmp_path):
    layout, out, command = trashcan
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"]
    (extra,) = [w for w in words if w.startswith("data.extra_train=")]
    # one epoch: every image of both sources is read (a pseudo image that cannot be found stops the run)
    result = subprocess.run([sys.executable, "train.py", *SMALL, *layout, extra, f"runs_dir={tmp_path / 'runs'}",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    (source,) = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["extra_train"]
    assert Path(source["ann"]) == out.resolve() and source["crowd"] == "ignore"
    # the whole epoch ran over both sources: (24 train + the kept test images) // batch 4 (drop_last)
    root = Path(layout[0].split("=", 1)[1])
    steps = (len(read(root / "train" / "annotations.json")["images"]) + len(read(out)["images"])) // 4
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == steps


def test_a_pseudo_file_is_marked_and_refused_unless_crowd_regions_are_ignored(trashcan):
    layout, out, _ = trashcan
    coco = read(out)
    assert coco["info"][MARKER] is True and any(a["iscrowd"] for a in coco["annotations"])
    root = Path(layout[0].split("=", 1)[1])
    common = {"train_ann": "train/annotations.json", "val_ann": "val/annotations.json", "images_relative_to": "ann"}
    with pytest.raises(ValueError) as refused:
        TrashDataModule(root, **common, extra_train=[{"ann": str(out)}])
    message = str(refused.value)
    assert "\n" not in message and f"data.extra_train[0]: {out} holds pseudo-labels" in message
    assert "under crowd: label" in message and "add crowd: ignore to that source" in message
    with pytest.raises(ValueError, match="under crowd: label"):  # saying crowd: label on the source is no way round
        TrashDataModule(root, **common, extra_train=[{"ann": str(out), "crowd": "label"}])
    # crowd: ignore on the source, or on the main data (which the source inherits), is accepted
    TrashDataModule(root, **common, extra_train=[{"ann": str(out), "crowd": "ignore"}])
    TrashDataModule(root, **common, crowd="ignore", extra_train=[{"ann": str(out)}])


def test_an_unmarked_labelled_file_with_crowd_regions_is_still_an_extra_source(trashcan, tmp_path):
    """Real data with iscrowd annotations (e.g. COCO's own) keeps the default crowd: label."""
    layout, out, _ = trashcan
    coco = read(out)
    del coco["info"][MARKER]
    plain = tmp_path / "crowded.json"
    plain.write_text(json.dumps(coco))
    root = Path(layout[0].split("=", 1)[1])
    data = TrashDataModule(root, train_ann="train/annotations.json", val_ann="val/annotations.json",
                           images_relative_to="ann", extra_train=[{"ann": str(plain)}])
    assert data.extra_train == [{"ann": str(plain)}]
