"""The small quickstart config the training tests build on: a 3-stage UNet on the synthetic data,
CSV logs, no workers, runs under the test's own folder."""

from pathlib import Path

from hydra import compose, initialize_config_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_quickstart(data_root: Path, tmp_path: Path, *overrides: str, batch_size: int = 4):
    base = ["experiment=quickstart", f"data.root={data_root}", "data.num_workers=0", f"data.batch_size={batch_size}",
            "data.val_batch_size=5", "trainer.enable_progress_bar=false", "logger=csv", f"runs_dir={tmp_path / 'runs'}",
            "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))
