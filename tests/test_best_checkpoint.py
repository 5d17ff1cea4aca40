"""best.ckpt holds the weights and what scoring a run reads (config, class list, fold record, epoch);
the optimizer, scheduler and callback states live in last.ckpt only, which resumes the run."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from trashseg.checkpoint import read_checkpoint, run_config
from trashseg.inference.checkpoint import load_checkpoint
from trashseg.training import run as run_module

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_best_holds_the_weights_and_what_scoring_reads_last_holds_the_training_state(synthetic_root, tmp_path):
    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                 "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=csv", f"runs_dir={tmp_path}",
                 "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", "optimizer=adamw"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run_dir = tmp_path / "quickstart" / "one"
    run_module.train(cfg, run_dir)
    best_path, last_path = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    best, last = read_checkpoint(best_path), read_checkpoint(last_path)

    assert set(best) == {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "hyper_parameters",
                         "hparams_name"}
    assert {"optimizer_states", "lr_schedulers", "callbacks", "loops"} <= set(last)
    assert best["global_step"] == last["global_step"] == 6 and best["epoch"] == 0  # 24 images / 4
    assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    assert run_config(best, best_path) == run_config(last, last_path)  # model, classes, fold record
    assert load_checkpoint(best_path).classes[9] == "Battery"  # what inference, OOF and ensembles open

    # AdamW keeps two tensors per trainable weight: last.ckpt is about 3x the weights, best.ckpt 1x
    weights = sum(t.numel() * t.element_size() for t in last["state_dict"].values())
    trainable = sum(t.numel() * t.element_size() for k, t in last["state_dict"].items()
                    if t.is_floating_point() and "running_" not in k)
    assert best_path.stat().st_size < weights + 100_000
    assert last_path.stat().st_size > weights + 2 * trainable

    # resuming from the weights-only file is one line naming last.ckpt, before any run file is touched
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        again = compose(config_name="train", overrides=overrides + [f"resume={best_path}"])
    with pytest.raises(ValueError, match=r"holds the weights only \(a best.ckpt\); resume from .*last.ckpt") as err:
        run_module.train(again, tmp_path / "quickstart" / "two")
    assert "\n" not in str(err.value) and not (tmp_path / "quickstart" / "two").exists()
