"""The model cost card prints parameters, FLOPs and latency for the configs it is given."""

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
