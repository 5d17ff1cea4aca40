"""trashseg.tools.compare on run folders made by hand (and on real runs in test_tools_e2e)."""

import logging

import pandas as pd
import pytest
import yaml
from PIL import Image

from trashseg.tools import compare


def make_run(folder, lr, miou_by_epoch, paper_by_epoch):
    folder.mkdir(parents=True)
    config = {"experiment_name": "quickstart", "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": 0.01},
              "data": {"classes": ["Background", "Paper"], "batch_size": 4}, "paths": {"output_dir": str(folder)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for epoch, (miou, paper) in enumerate(zip(miou_by_epoch, paper_by_epoch)):
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "train/loss": 1.0 / (epoch + 1)})  # a training row
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/mIoU": miou, "val/IoU/Background": 0.9, "val/IoU/Paper": paper})
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "quickstart" / "a", 1e-3, [0.30, 0.55, 0.50], [0.1, 0.2, 0.3])
    make_run(root / "quickstart" / "b", 3e-4, [0.20, 0.40, 0.45], [0.0, 0.1, 0.15])
    (root / "notes").mkdir()
    return root


def test_table_lists_differing_keys_and_best_epoch(runs, caplog):
    with caplog.at_level(logging.WARNING):
        found = compare.find_runs([runs])
    assert [p.name for p in found] == ["a", "b"]
    assert "notes" in caplog.text and "not a run folder" in caplog.text
    table, _ = compare.compare(found)
    assert [c for c in table.columns if "." in c] == ["optimizer.lr"]  # paths.output_dir is identity, not a difference
    first, second = table.iloc[0], table.iloc[1]
    assert first["run"].endswith("a") and first["best val/mIoU"] == pytest.approx(0.55) and first["best epoch"] == 1
    assert first["Paper"] == pytest.approx(0.2)  # per-class IoU at the best epoch, not the last
    assert second["best val/mIoU"] == pytest.approx(0.45) and second["best epoch"] == 2
    assert first["optimizer.lr"] == pytest.approx(1e-3)


def test_cli_writes_markdown_csv_and_pictures(runs, tmp_path, capsys):
    out = tmp_path / "report" / "report.md"
    assert compare.main([str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert "optimizer.lr" in text and "0.5500" in text
    assert pd.read_csv(out.with_suffix(".csv")).shape[0] == 2
    for png in ("report_miou.png", "report_class_iou.png"):
        with Image.open(out.parent / png) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400


def test_no_runs_is_an_error(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 1
    assert "no runs found" in capsys.readouterr().err
