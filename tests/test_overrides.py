"""Command-line overrides of keys that do not exist stop before Hydra runs anything, with a hint;
a setup error in train.py is one line and leaves no run folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from trashseg.training.config_keys import check_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("args, message", [
    (["experiment=quickstart", "optimizer.lrr=1e-3"],
     "unknown config key 'optimizer.lrr'; did you mean optimizer.lr? (to add a new key on purpose: +optimizer.lrr=1e-3)"),
    (["trainer.max_epoch=3"], "unknown config key 'trainer.max_epoch'; did you mean trainer.max_epochs"),
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
    ["experiment=competition/fcn8s_vgg16", "model.variant=16s", "data.batch_size=4"],  # keys the experiment's model has
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
                               "data=synthetic", f"data.root={tmp_path / 'data'}", override],  # generated there on purpose
                              cwd=REPO, capture_output=True, text=True)
        assert done.returncode != 0
        assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
        assert "Traceback" not in done.stderr
        assert not run_dir.exists()  # nothing half-made is left behind


# Trainer arguments the README and docs tell users to type (`trainer.max_time=00:00:15:00`) are in
# the trainer configs, so they need no `+`; null or the Trainer's own default keeps behaviour the same.
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ADDED_TO_THE_CONFIGS = {"max_steps": -1, "max_time": None, "val_check_interval": None}  # Lightning 2.6's defaults


def composed(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_every_trainer_key_the_docs_name_is_in_every_trainer_config():
    import re

    named = {key for doc in DOCS for key in re.findall(r"\btrainer\.([a-z_]+)", doc.read_text())}
    assert {"max_time", "max_steps", "num_nodes"} <= named  # the scan does find what the README names
    for trainer in sorted(p.stem for p in (CONFIGS / "trainer").glob("*.yaml")):
        missing = named - set(composed(f"trainer={trainer}").trainer)
        assert not missing, f"trainer={trainer} lacks {sorted(missing)}"


@pytest.mark.parametrize("args", [
    ["trainer.max_time=00:00:15:00"],  # as the README's fault table writes it
    ["trainer.max_epochs=-1", "trainer.max_steps=100", "trainer.val_check_interval=0.5"],
    ["experiment=bench/trashcan_curve", "trainer.max_time=00:00:05:00", "trainer.val_check_interval=0.25"],
])
def test_the_trainer_keys_the_readme_names_need_no_plus(args):
    from trashseg.training.config_keys import check_config

    assert check_overrides(args, CONFIGS) is None
    cfg = composed(*args)
    check_config(cfg)
    for arg in args:
        key, value = arg.split("=")
        if key.startswith("trainer."):
            assert str(cfg.trainer[key.removeprefix("trainer.")]) == value


def test_the_added_keys_build_the_same_trainer_as_leaving_them_out():
    import inspect

    import lightning as L

    defaults = inspect.signature(L.Trainer.__init__).parameters
    assert {k: defaults[k].default for k in ADDED_TO_THE_CONFIGS} == ADDED_TO_THE_CONFIGS
    trainer = dict(composed("experiment=quickstart").trainer)
    assert {k: trainer[k] for k in ADDED_TO_THE_CONFIGS} == ADDED_TO_THE_CONFIGS
    quiet = {"logger": False, "enable_checkpointing": False}
    built = L.Trainer(**trainer, **quiet)
    before = L.Trainer(**{k: v for k, v in trainer.items() if k not in ADDED_TO_THE_CONFIGS}, **quiet)
    for trainer_of in (built, before):
        assert (trainer_of.max_steps, trainer_of.max_epochs, trainer_of.val_check_interval) == (-1, 12, 1.0)
    assert built.callbacks.__class__ == before.callbacks.__class__
    assert [type(c).__name__ for c in built.callbacks] == [type(c).__name__ for c in before.callbacks]  # no Timer


@pytest.mark.parametrize("args, message", [
    (["trainer.max_tme=00:00:15:00"], "unknown config key 'trainer.max_tme'; did you mean trainer.max_time"),
    (["trainer.val_check_intervall=0.5"], "unknown config key 'trainer.val_check_intervall'; did you mean "
                                          "trainer.val_check_interval"),
    # the `+` that was needed before: one line instead of Hydra's "Could not append to config"
    (["+trainer.max_time=00:00:15:00"], "config key 'trainer.max_time' exists already, so it cannot be added: "
                                        "write trainer.max_time=00:00:15:00 (without the +)"),
    (["experiment=quickstart", "+optimizer.lr=1e-3"], "write optimizer.lr=1e-3 (without the +)"),
])
def test_typos_and_needless_additions_of_trainer_keys_are_one_line(args, message):
    found = check_overrides(args, CONFIGS)
    assert found is not None and message in found, found
