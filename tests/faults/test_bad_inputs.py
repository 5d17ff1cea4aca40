"""Every bad file or input a user can hand trashseg stops with one line naming the file, the cause
and the fix, before work is lost, and leaves no half-written file (docs/faults.md)."""

import errno
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from faultlib import explain, run_script, small_config, temp_files
from trashseg.atomic import DiskFullError
from trashseg.checkpoint import CheckpointFileError
from trashseg.errors import one_line
from trashseg.inference.command import main as inference
from trashseg.inference.probs_store import ProbsWriter, read_index
from trashseg.submission.__main__ import main as submission_cli
from trashseg.checkpoint import lightning_io
from trashseg.training.callbacks.history import read_rows
from trashseg.training.run import train


@pytest.fixture
def data(synthetic_root, tmp_path):
    """A copy of the synthetic data set to damage."""
    return shutil.copytree(synthetic_root, tmp_path / "data")


def run_copy(one_epoch, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(one_epoch, runs / "quickstart" / "one")
    return runs, runs / "quickstart" / "one"


def edit_json(path, change):
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


def fails_in_one_line(cfg, run_dir, error, match):
    with pytest.raises(error) as caught:
        train(cfg, run_dir)
    line = one_line(caught.value)
    assert "\n" not in line and match in line, line
    return line


# -- data ------------------------------------------------------------------------------------

def first_train_image(data):
    return data / json.loads((data / "train.json").read_text())["images"][0]["file_name"]


def test_missing_image(data, tmp_path):
    first_train_image(data).unlink()
    line = fails_in_one_line(small_config(data, tmp_path / "runs"), tmp_path / "run", FileNotFoundError, "image not found")
    assert str(first_train_image(data)) in line


def test_image_of_another_size_than_the_json_says(data, tmp_path):
    Image.new("RGB", (48, 64)).save(first_train_image(data))
    line = fails_in_one_line(small_config(data, tmp_path / "runs"), tmp_path / "run", ValueError, "is 48x64 but train.json says 64x64")
    assert str(first_train_image(data)) in line


def test_truncated_image_in_a_loader_worker_is_one_line_from_train_py(data, tmp_path):
    image = first_train_image(data)
    image.write_bytes(image.read_bytes()[:300])
    result = run_script("train.py", "experiment=quickstart", f"data.root={data}", "data.num_workers=1", "logger=csv",
                        "data.batch_size=4",
                        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
                        "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]",
                        f"runs_dir={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, explain(result)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: truncated JPEG: {image}") and "re-copy it" in line
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


def test_truncated_image_in_a_loader_worker_is_one_line_from_inference(data, one_epoch, tmp_path, capsys):
    test_image = data / json.loads((data / "test.json").read_text())["images"][2]["file_name"]
    test_image.write_bytes(test_image.read_bytes()[:300])
    out = tmp_path / "s.csv"
    assert inference(["--checkpoint", str(one_epoch / "checkpoints" / "last.ckpt"), "--data-root", str(data),
                      "--num-workers", "1", "--batch-size", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err  # after tqdm's progress bar
    [line] = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: truncated JPEG: {test_image}") and "Traceback" not in err
    assert not out.exists() and temp_files(tmp_path) == []


@pytest.mark.parametrize("damage, error, match", [
    (lambda c: c["categories"][0].update(name="Batery"), ValueError, "category 'Batery' (id 9) is not in the class list"),
    (lambda c: c["images"][1].update(id=c["images"][0]["id"]), ValueError, "duplicate image ids [0]"),
    (lambda c: c.update(annotations=[]), ValueError, "has no annotations, so every mask would be background"),
], ids=["unknown category", "duplicate ids", "empty annotation list"])
def test_bad_annotation_file_stops_before_any_file_is_written(data, tmp_path, damage, error, match):
    edit_json(data / "train.json", damage)
    fails_in_one_line(small_config(data, tmp_path / "runs"), tmp_path / "run", error, match)
    assert not (tmp_path / "run").exists()


# -- checkpoints -----------------------------------------------------------------------------

class Code:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("make, match", [
    (lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]), "is truncated or not a PyTorch checkpoint"),
    (lambda good, path: path.write_text("not a checkpoint"), "is truncated or not a PyTorch checkpoint"),
    (lambda good, path: torch.save({"state_dict": {}, "payload": Code()}, path), "holds pickled Python objects"),
    (lambda good, path: torch.save({"state_dict": {}}, path), "is not a trashseg training checkpoint"),
], ids=["truncated", "not a checkpoint", "pickled code", "foreign checkpoint"])
def test_bad_checkpoint_to_inference_is_one_line(one_epoch, tmp_path, capsys, make, match):
    bad = tmp_path / "bad.ckpt"
    make(one_epoch / "checkpoints" / "last.ckpt", bad)
    assert inference(["--checkpoint", str(bad), "--num-workers", "0", "--out", str(tmp_path / "s.csv")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"error: {bad}" in captured.err and match in captured.err
    assert "this ran" not in captured.out  # the pickled code never ran
    assert not (tmp_path / "s.csv").exists()


def test_resume_never_picks_a_truncated_checkpoint(synthetic_root, one_epoch, tmp_path):
    runs, run = run_copy(one_epoch, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. copied by hand and cut short
    line = fails_in_one_line(small_config(synthetic_root, runs, "resume=auto"), tmp_path / "fresh", CheckpointFileError,
                             f"{last} is truncated")
    assert "copy it again, or use another checkpoint" in line


def test_resume_with_other_overrides_is_refused_naming_them(synthetic_root, one_epoch, tmp_path):
    runs, run = run_copy(one_epoch, tmp_path)
    cfg = small_config(synthetic_root, runs, "resume=auto", "trainer.max_epochs=1", "optimizer.lr=1e-3",
                       "data.classes.2=Cardboard")
    # resume=auto finds no run this command continues, and names the run with what differs (issue 27)
    line = fails_in_one_line(cfg, tmp_path / "fresh", ValueError, "resume=auto: no run of 'quickstart'")
    assert "data.classes" in line and "optimizer.lr (0.003 -> 0.001)" in line and "start a new run" in line
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr"] == 0.003  # untouched


def test_resume_applies_and_records_a_longer_run(synthetic_root, one_epoch, tmp_path):
    runs, run = run_copy(one_epoch, tmp_path)
    train(small_config(synthetic_root, runs, "resume=auto", "trainer.max_epochs=2"), tmp_path / "fresh")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    # config.yaml keeps what the first part trained with; the change is in resumes.yaml (issue 32)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    [entry] = yaml.safe_load((run / "resumes.yaml").read_text())
    assert entry["epoch"] == 0 and entry["changed"] == {"trainer.max_epochs": {"was": 1, "now": 2}}


def test_new_run_into_a_used_folder_is_refused(synthetic_root, one_epoch, tmp_path):
    runs, run = run_copy(one_epoch, tmp_path)
    fails_in_one_line(small_config(synthetic_root, runs), run, FileExistsError, "already holds a run")


# -- disk full -------------------------------------------------------------------------------

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(synthetic_root, tmp_path, monkeypatch):
    saves = {"n": 0}
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 2:  # best and last of epoch 0 fit; epoch 1's do not
            f.write(b"PK\x03\x04 partial")
            no_space()
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(lightning_io.torch, "save", save_until_full)
    run = tmp_path / "runs" / "quickstart" / "full"
    line = fails_in_one_line(small_config(synthetic_root, tmp_path / "runs"), run, DiskFullError, "no space left")
    assert "checkpoints/" in line and "free space" in line
    monkeypatch.undo()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert temp_files(run) == []


def test_disk_full_while_writing_metrics_keeps_the_csv(synthetic_root, tmp_path, monkeypatch):
    import os

    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):
        if ".metrics.csv.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] > 1:
                no_space()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "runs" / "quickstart" / "full"
    fails_in_one_line(small_config(synthetic_root, tmp_path / "runs"), run, DiskFullError, "metrics.csv")
    monkeypatch.undo()
    assert list(read_rows(run / "metrics.csv")[-1]) and len(read_rows(run / "metrics.csv")) == 7  # epoch 0 whole
    assert temp_files(run) == []


def test_disk_full_while_writing_a_submission(tmp_path, capsys, monkeypatch):
    from trashseg.submission import SubmissionWriter

    masks = {f"batch_01_vt/{i:04d}.jpg": np.full((256, 256), i % 11, np.uint8) for i in range(3)}
    for name in ("a.csv", "b.csv"):
        with SubmissionWriter(tmp_path / name) as writer:
            for image_id, mask in masks.items():
                writer.write(image_id, mask)
    real_write = SubmissionWriter.write

    def write_until_full(self, image_id, labels):
        if len(self.ids) == 2:
            no_space()
        real_write(self, image_id, labels)

    monkeypatch.setattr(SubmissionWriter, "write", write_until_full)
    out = tmp_path / "vote.csv"
    assert submission_cli(["vote", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device while writing" in err and str(out) in err
    assert not out.exists() and temp_files(tmp_path) == []


# -- CSVs and probability folders ----------------------------------------------------------------

def test_resume_with_an_unreadable_metrics_csv_is_one_line(synthetic_root, one_epoch, tmp_path):
    runs, run = run_copy(one_epoch, tmp_path)
    (run / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    line = fails_in_one_line(small_config(synthetic_root, runs, "resume=auto", "trainer.max_epochs=2"), tmp_path / "fresh",
                             ValueError, f"{run / 'metrics.csv'} is not a readable metrics CSV")
    assert "move it aside" in line


def test_one_line_unwraps_an_error_raised_in_a_loader_worker(data):
    from torch.utils.data import DataLoader

    from trashseg.data.dataset import CocoSegmentationDataset

    image = first_train_image(data)
    image.write_bytes(image.read_bytes()[:300])
    loader = DataLoader(CocoSegmentationDataset(data, "train.json"), batch_size=None, num_workers=1)
    with pytest.raises(ValueError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # what the worker hands over...
    assert one_line(caught.value) == f"truncated JPEG: {image} (the file ends before the JPEG end marker; re-copy it)"


def test_truncated_csv_to_vote_is_one_line(tmp_path, capsys):
    from trashseg.submission import SubmissionWriter

    for name in ("a.csv", "b.csv"):
        with SubmissionWriter(tmp_path / name) as writer:
            writer.write("x.jpg", np.zeros((256, 256), np.uint8))
    cut = tmp_path / "b.csv"
    cut.write_bytes(cut.read_bytes()[:5000])
    assert submission_cli(["vote", str(tmp_path / "a.csv"), str(cut), "--out", str(tmp_path / "v.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cut} line 2:" in err and "labels, expected 65536" in err


def test_probs_folder_of_an_earlier_run_is_replaced_whole_and_other_folders_refused(tmp_path):
    folder = tmp_path / "probs"
    with ProbsWriter(folder, ["a", "b"], ["one.ckpt"]) as writer:
        for image_id in (1, 2, 3):
            writer.write(image_id, f"{image_id}.jpg", np.zeros((2, 4, 4)))
    with ProbsWriter(folder, ["a", "b"], ["two.ckpt"]) as writer:
        writer.write(7, "7.jpg", np.ones((2, 4, 4)))
    assert sorted(p.name for p in folder.iterdir()) == ["7.npy", "index.json"]
    assert read_index(folder)["sources"] == ["two.ckpt"] and temp_files(tmp_path) == []
    (folder / "7.npy").write_bytes((folder / "7.npy").read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{folder / '7.npy'} is truncated .*inference.py --save-probs"):
        read_index(folder)
    with pytest.raises(FileExistsError, match="is not a probabilities folder"):
        ProbsWriter(tmp_path, ["a"], [])  # holds probs/ and other files: never replaced
