"""Command-line overrides of keys that do not exist stop before Hydra runs anything, with a hint;
a setup error in train.py is one line and leaves no run folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from trashseg.training.overrides import check_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("args, message", [
    (["experiment=quickstart", "optimizer.lrr=1e-3"],
     "unknown config key 'optimizer.lrr'; did you mean optimizer.lr? (to add a new key on purpose: +optimizer.lrr=1e-3)"),
    (["trainer.max_epoch=3"], "unknown config key 'trainer.max_epoch'; did you mean trainer.max_epochs?"),
    (["-m", "experiment=quickstart", "optimizer.lrr=1e-3,3e-4"], "+optimizer.lrr=1e-3,3e-4"),
    (["data.batchsize=3"], "unknown config key 'data.batchsize'; did you mean data.batch_size"),
    (["logger.wandb.projekt=x"], "unknown config key 'logger.wandb.projekt'; did you mean logger.wandb.project"),
    (["lrr=0.1"], "unknown config key 'lrr'"),
    (["+augment/copy_paste=rare", "augment.copy_paste.pp=0.8"],
     "unknown config key 'augment.copy_paste.pp'; did you mean augment.copy_paste.p"),
    # a key one model of a group sweep lacks: named with the selection that lacks it
    (["-m", "experiment=quickstart", "model=unet_tiny,fcn8s_vgg16", "model.encoder_name=resnet34"],
     "unknown config key 'model.encoder_name'; valid keys: batch_norm, fc_channels, name, pretrained, variant "
     "with experiment=quickstart model=fcn8s_vgg16"),
])
def test_unknown_keys_are_named_with_the_closest(args, message):
    found = check_overrides(args, CONFIGS)
    assert found is not None and found.startswith("unknown config key '") and message in found, found


@pytest.mark.parametrize("args", [
    ["experiment=quickstart", "optimizer.lr=1e-3", "model.decoder.decoder_channels=[8,8,8,8,8]"],
    ["experiment=fcn8s_vgg16", "model.variant=16s", "data.batch_size=4"],  # keys the experiment's model has
    ["-m", "experiment=quickstart", "optimizer.lr=1e-3,3e-4", "hydra.run.dir=x", "hydra.sweep.dir=y"],
    ["+optimizer.new_key=1", "~trainer.max_time", "++seed=3"],  # additions and deletions: Hydra's business
    ["+augment/copy_paste=rare", "augment.copy_paste.p=0.8"],  # a key of a group added on the command line
    ["experiment=quickstrat", "optimizer.lrr=1"],  # no such experiment: Hydra lists the valid ones
    ["--config-name", "other", "optimizer.lrr=1"],  # another primary config: not ours to check
])
def test_valid_or_not_ours_to_judge(args):
    assert check_overrides(args, CONFIGS) is None


def test_train_py_stops_with_one_line_and_no_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    for override, message in [
        ("optimizer.lrr=1e-3", "error: unknown config key 'optimizer.lrr'; did you mean optimizer.lr?"),
        ("model.encoder_name=resnet-18", "error: smp has no encoder 'resnet-18'; closest: resnet18"),  # at setup
    ]:
        done = subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={run_dir}",
                               f"data.root={tmp_path / 'data'}", override], cwd=REPO, capture_output=True, text=True)
        assert done.returncode != 0
        assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
        assert "Traceback" not in done.stderr
        assert not run_dir.exists()  # nothing half-made is left behind
