"""Sweeps, comparison and pictures on real short runs: `train.py -m` with two learning rates,
then tools.compare and tools.visualize on what it left."""

import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from trashseg.tools import compare, visualize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep(synthetic_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "train.py", "-m", "experiment=quickstart", "optimizer.lr=0.003,0.0003", f"data.root={synthetic_root}",
           "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "trainer.max_epochs=2", "logger=csv",
           "trainer.enable_progress_bar=false", "model.decoder.decoder_channels=[32,16,16,8,8]", f"runs_dir={runs}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return runs


def test_multirun_puts_each_run_in_its_own_folder(sweep):
    found = compare.find_runs([sweep])
    assert len(found) == 2 and len({p.parent for p in found}) == 1 and {p.name for p in found} == {"0", "1"}


def test_compare_lists_the_differing_key_and_best_epochs(sweep, caplog, tmp_path):
    (sweep / "notes").mkdir()
    with caplog.at_level(logging.WARNING):
        found = compare.find_runs([sweep])
    assert "notes" in caplog.text
    table, _ = compare.compare(found)
    assert [c for c in table.columns if "." in c] == ["optimizer.lr"]
    for _, row in table.iterrows():
        metrics = pd.read_csv(Path(row["run"]) / "metrics.csv").dropna(subset=["val/mIoU"])
        best = metrics.loc[metrics["val/mIoU"].idxmax()]
        assert row["best val/mIoU"] == pytest.approx(best["val/mIoU"]) and row["best epoch"] == best["epoch"]
    assert table["best val/mIoU"].is_monotonic_decreasing
    out = tmp_path / "report.md"
    assert compare.main([str(sweep), "--out", str(out)]) == 0
    with Image.open(tmp_path / "report_miou.png") as curves, Image.open(tmp_path / "report_class_iou.png") as bars:
        assert curves.size == (800, 500) and bars.size[1] == 500


def test_visualize_writes_grid_and_confusion(sweep, tmp_path):
    ckpt = compare.find_runs([sweep])[0] / "checkpoints" / "best.ckpt"
    assert visualize.main(["--checkpoint", str(ckpt), "--n", "3", "--out", str(tmp_path), "--device", "cpu"]) == 0
    with Image.open(tmp_path / "predictions.png") as grid, Image.open(tmp_path / "confusion.png") as confusion:
        assert grid.size[0] == 960 and grid.size[1] > 3 * 200  # 4 panels x 3 rows plus the legend
        assert confusion.size == (810, 720)
