"""An ensemble + TTA run split into shards (one process per GPU) and merged gives the CSV of one
process, byte for byte; a wrong set of shards is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from trashseg.inference.cli import main as inference
from trashseg.inference.ensemble import main as ensemble
from trashseg.inference.shards import main as merge
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


def test_three_shards_merged_give_one_process_csv_byte_for_byte(two_checkpoints, synthetic_root, tmp_path):
    whole = tmp_path / "whole"
    assert inference([*models(two_checkpoints), "--split", "test", "--save-probs", str(whole),
                      "--out", str(tmp_path / "direct.csv")]) == 0  # the CSV comes from the saved (float16) probs below
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        assert inference([*models(two_checkpoints), "--split", "test", "--shard", f"{i}/3", "--save-probs", str(part)]) == 0
    test_ids = [im["id"] for im in json.loads((synthetic_root / "test.json").read_text())["images"]]
    assert [im["id"] for im in json.loads((parts[1] / "index.json").read_text())["images"]] == test_ids[1::3]

    merged = tmp_path / "merged"
    assert merge([str(p) for p in reversed(parts)] + ["--out", str(merged)]) == 0  # any order of the parts
    assert json.loads((merged / "index.json").read_text())["images"] == \
        json.loads((whole / "index.json").read_text())["images"]
    for image_id in test_ids:
        assert np.array_equal(np.load(merged / f"{image_id}.npy"), np.load(whole / f"{image_id}.npy"))
    for folder, csv in ((merged, "merged.csv"), (whole, "whole.csv")):
        assert ensemble(["--probs", str(folder), "--out", str(tmp_path / csv)]) == 0
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


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
    with pytest.raises(SystemExit):
        inference([*models(two_checkpoints[:1]), "--weights", "1", "--split", "test", "--shard", "0/2"])
    assert "add --save-probs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference([*models(two_checkpoints[:1]), "--split", "test", "--shard", "2/2", "--save-probs", str(tmp_path / "x")])
    assert "i must be 0..1" in capsys.readouterr().err
