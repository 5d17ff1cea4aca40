"""An ensemble + TTA run split into shards (one process per GPU) and merged gives the CSV of one
process, byte for byte, with and without --post; shards made differently (models by content,
weights, TTA, scales, resize, post, data) are refused in one line; a wrong set of shards is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from trashseg.inference.command import main as inference
from trashseg.inference.ensemble import main as ensemble
from trashseg.inference.shards import main as merge
from trashseg.submission import read_submission
from trashseg.training import run as run_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def two_checkpoints(synthetic_root, tmp_path_factory) -> list[Path]:
    paths = []
    for seed in (0, 1):
        run_dir = tmp_path_factory.mktemp("run") / f"seed{seed}"
        overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                     "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                     "logger=csv", f"seed={seed}", "model.decoder.decoder_channels=[32,16,16,8,8]"]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            run_module.train(compose(config_name="train", overrides=overrides), run_dir)
        paths.append(run_dir / "checkpoints" / "best.ckpt")
    return paths


def models(checkpoints: list[Path]) -> list[str]:
    return [a for c in checkpoints for a in ("--checkpoint", str(c))] + ["--weights", "2", "1", "--tta", "hflip",
                                                                        "--num-workers", "0", "--batch-size", "1"]


def sharded_csv(checkpoints: list[Path], extra: list[str], tmp_path: Path, count: int = 3) -> Path:
    """The CSV of `count` shards, merged (parts given in reverse order) and written by the ensemble."""
    parts = [tmp_path / f"part{i}" for i in range(count)]
    for i, part in enumerate(parts):
        assert inference([*models(checkpoints), *extra, "--split", "test", "--shard", f"{i}/{count}",
                          "--save-probs", str(part)]) == 0
    merged = tmp_path / "merged"
    assert merge([str(p) for p in reversed(parts)] + ["--out", str(merged)]) == 0
    assert ensemble(["--probs", str(merged), "--out", str(tmp_path / "merged.csv")]) == 0
    return tmp_path / "merged.csv"


def assert_same_csv(merged: Path, direct: Path) -> None:
    assert merged.read_bytes() == direct.read_bytes()
    rows, expected = list(read_submission(merged)), list(read_submission(direct))
    assert [r[0] for r in rows] == [r[0] for r in expected] and len(rows) == 6
    for (_, labels), (_, truth) in zip(rows, expected):
        np.testing.assert_array_equal(labels, truth)


def test_three_shards_merged_give_the_one_process_csv_byte_for_byte(two_checkpoints, synthetic_root, tmp_path):
    direct = tmp_path / "direct.csv"
    assert inference([*models(two_checkpoints), "--split", "test", "--out", str(direct)]) == 0  # labels from float32
    merged = sharded_csv(two_checkpoints, [], tmp_path)
    test_ids = [im["id"] for im in json.loads((synthetic_root / "test.json").read_text())["images"]]
    assert [im["id"] for im in json.loads((tmp_path / "part1" / "index.json").read_text())["images"]] == test_ids[1::3]
    assert [im["id"] for im in json.loads((tmp_path / "merged" / "index.json").read_text())["images"]] == test_ids
    assert_same_csv(merged, direct)


def test_post_given_to_the_shards_is_applied_to_the_merged_csv(two_checkpoints, tmp_path):
    direct = tmp_path / "direct.csv"
    assert inference([*models(two_checkpoints), "--post", "mode3", "--split", "test", "--out", str(direct)]) == 0
    plain = tmp_path / "plain.csv"
    assert inference([*models(two_checkpoints), "--split", "test", "--out", str(plain)]) == 0
    assert direct.read_bytes() != plain.read_bytes()  # mode3 changes labels here, so the comparison below means something
    assert_same_csv(sharded_csv(two_checkpoints, ["--post", "mode3"], tmp_path), direct)


def test_crf_given_to_the_shards_reads_the_recorded_images(two_checkpoints, tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="pip install pydensecrf2 (optional) to test --post crf")
    direct = tmp_path / "direct.csv"
    assert inference([*models(two_checkpoints), "--post", "crf", "--split", "test", "--out", str(direct)]) == 0
    assert_same_csv(sharded_csv(two_checkpoints, ["--post", "crf"], tmp_path, count=2), direct)


@pytest.fixture(scope="module")
def first_shard(two_checkpoints, tmp_path_factory) -> Path:
    part = tmp_path_factory.mktemp("base") / "part0"
    assert inference([*models(two_checkpoints), "--split", "test", "--shard", "0/2", "--save-probs", str(part)]) == 0
    return part


def _other_data_root(synthetic_root: Path, tmp_path: Path, _) -> list[str]:
    return ["--data-root", str(shutil.copytree(synthetic_root, tmp_path / "copy"))]


def _other_annotation_file(synthetic_root: Path, tmp_path: Path, _) -> list[str]:
    coco = json.loads((synthetic_root / "test.json").read_text())
    coco["info"] = {"description": "the same images, another file"}
    (tmp_path / "test_other.json").write_text(json.dumps(coco))
    return ["--ann", str(tmp_path / "test_other.json")]  # an absolute --ann: the data root stays the same


@pytest.mark.parametrize("setting, differs", [
    ("--tta", lambda root, tmp, ckpts: ["--tta", "vflip"]),
    ("--scales", lambda root, tmp, ckpts: ["--scales", "0.5", "1.0"]),
    ("--resize", lambda root, tmp, ckpts: ["--resize", "48", "48"]),
    ("--post", lambda root, tmp, ckpts: ["--post", "mode3"]),
    ("models (file contents and --weights)", lambda root, tmp, ckpts: ["--weights", "1", "1"]),
    ("models (file contents and --weights)", lambda root, tmp, ckpts: ["--checkpoint", str(ckpts[0]), "--weights", "2", "1", "1"]),
    ("--split", lambda root, tmp, ckpts: ["--split", "val"]),
    ("data root", _other_data_root),
    ("annotation file", _other_annotation_file),
])
def test_shards_made_differently_are_refused_in_one_line(setting, differs, two_checkpoints, first_shard, synthetic_root,
                                                         tmp_path, capsys):
    second = tmp_path / "part1"
    assert inference([*models(two_checkpoints), "--split", "test", *differs(synthetic_root, tmp_path, two_checkpoints),
                      "--shard", "1/2", "--save-probs", str(second)]) == 0
    capsys.readouterr()
    assert merge([str(first_shard), str(second), "--out", str(tmp_path / "merged")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"other {setting}" in err, err
    assert str(first_shard) in err and str(second) in err and not (tmp_path / "merged").exists()


def test_the_same_checkpoint_under_another_path_is_the_same_model(two_checkpoints, first_shard, tmp_path, monkeypatch):
    copies = tmp_path / "elsewhere"
    copies.mkdir()
    for i, ckpt in enumerate(two_checkpoints):
        shutil.copyfile(ckpt, copies / f"model{i}.ckpt")
    monkeypatch.chdir(tmp_path)  # named by a relative path, through a detour
    relative = [Path("elsewhere") / ".." / "elsewhere" / f"model{i}.ckpt" for i in range(2)]
    assert inference([*models(relative), "--split", "test", "--shard", "1/2", "--save-probs", "part1"]) == 0
    assert merge([str(first_shard), "part1", "--out", "merged"]) == 0
    assert len(json.loads((tmp_path / "merged" / "index.json").read_text())["images"]) == 6


def test_folders_made_with_different_post_ask_for_one(two_checkpoints, tmp_path, capsys):
    for post in ("none", "mode3"):
        assert inference([*models(two_checkpoints), "--post", post, "--split", "test", "--save-probs",
                          str(tmp_path / post), "--out", str(tmp_path / f"{post}.csv")]) == 0
    capsys.readouterr()
    folders = ["--probs", str(tmp_path / "none"), str(tmp_path / "mode3")]
    assert ensemble([*folders, "--out", str(tmp_path / "ens.csv")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different --post" in err and "--post" in err and not (tmp_path / "ens.csv").exists()
    assert ensemble([*folders, "--post", "none", "--out", str(tmp_path / "ens.csv")]) == 0


def test_a_missing_or_repeated_shard_and_a_shard_without_probs_are_one_line(two_checkpoints, tmp_path, capsys):
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert inference([*models(two_checkpoints[:1]), "--weights", "1", "--split", "test", "--shard", f"{i}/2",
                          "--save-probs", str(part)]) == 0
    capsys.readouterr()
    assert merge([str(parts[0]), "--out", str(tmp_path / "m")]) != 0
    err = capsys.readouterr().err
    assert "shard(s) [1] missing" in err and err.strip().count("\n") == 0
    assert merge([str(parts[0]), str(parts[0]), "--out", str(tmp_path / "m")]) != 0
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert ensemble(["--probs", str(parts[0]), "--out", str(tmp_path / "part.csv")]) != 0  # a CSV of half the split
    err = capsys.readouterr().err
    assert f"{parts[0]} is shard 0/2" in err and "inference.shards" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "part.csv").exists()
    index = json.loads((parts[1] / "index.json").read_text())
    del index["made_by"]  # as a shard written before shards recorded their settings
    (parts[1] / "index.json").write_text(json.dumps(index))
    assert merge([str(parts[0]), str(parts[1]), "--out", str(tmp_path / "m")]) != 0
    err = capsys.readouterr().err
    assert f"{parts[1]} records no settings" in err and err.strip().count("\n") == 0
    with pytest.raises(SystemExit):
        inference([*models(two_checkpoints[:1]), "--weights", "1", "--split", "test", "--shard", "0/2"])
    assert "add --save-probs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference([*models(two_checkpoints[:1]), "--split", "test", "--shard", "2/2", "--save-probs", str(tmp_path / "x")])
    assert "i must be 0..1" in capsys.readouterr().err
