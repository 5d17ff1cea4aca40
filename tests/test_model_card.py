"""The model cost card prints parameters, FLOPs and latency for the configs it is given."""

import pytest

from trashseg.tools import model_card


def test_card_for_two_models(capsys, tmp_path):
    out = tmp_path / "card.csv"
    assert model_card.main(["--size", "32", "--models", "unet_tiny", "lraspp_mobilenet", "--repeats", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unet_tiny" in text and "lraspp_mobilenet" in text and "GFLOPs" in text
    import pandas as pd

    table = pd.read_csv(out)
    assert table["params (M)"].gt(1).all() and table["GFLOPs"].ge(0).all()
    # FLOPs grow with the input: 4x the pixels, about 4x the FLOPs
    assert model_card.cost("unet_tiny", 64, 1)["GFLOPs"] > 3 * model_card.cost("unet_tiny", 32, 1)["GFLOPs"]


def test_unknown_model_is_refused(capsys):
    assert model_card.main(["--models", "unet_huge"]) == 2
    assert "no config for unet_huge" in capsys.readouterr().err


def test_exported_columns_give_int8_a_quarter_of_the_fp32_file(tmp_path):
    pytest.importorskip("onnxruntime")
    row = model_card.cost("lraspp_mobilenet", 64, 1, exported=True)
    for column in ("ONNX fp32 latency (ms)", "ONNX int8 latency (ms)", "ONNX fp32 size (MB)", "ONNX int8 size (MB)"):
        assert row[column] > 0, column
    # 3.22 M parameters: about 12.9 MB as float32 and a quarter of that as int8 (plus scales and zero points)
    assert 12.0 < row["ONNX fp32 size (MB)"] < 14.5
    assert row["ONNX int8 size (MB)"] < 0.4 * row["ONNX fp32 size (MB)"]
    assert "ONNX fp32 size (MB)" not in model_card.cost("lraspp_mobilenet", 32, 1)  # the default card stays torch-only
