"""train.py's engine end to end on tiny synthetic data: run folder, resume, typos, NaN, DDP."""

import json
import math
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from trashseg.training import run as run_module
from trashseg.training.resuming.target import find_resume_checkpoint
from trashseg.training.run_config import plain_config
from trashseg.training.config_keys import ConfigError
from trashseg.training.module import NonFiniteLossError, SegmentationModule
from trashseg.data.datamodule import TrashDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(synthetic_root, tmp_path, *overrides):
    base = [
        "experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
        "data.val_batch_size=3", "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "logger=csv",
        f"runs_dir={tmp_path / 'runs'}", "model.decoder.decoder_channels=[32,16,16,8,8]",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))


def test_quickstart_writes_the_run_folder(synthetic_root, tmp_path):
    cfg = config(synthetic_root, tmp_path, "logger=default", "trainer.max_epochs=2")
    run_dir = tmp_path / "runs" / "quickstart" / "one"
    metrics = run_module.train(cfg, run_dir)
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B wrote offline, no network
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["root"] == str(synthetic_root) and saved["experiment_name"] == "quickstart"
    table = pd.read_csv(run_dir / "metrics.csv")
    val = table.dropna(subset=["val/mIoU"])
    assert list(val["epoch"]) == [0, 1] and "val/IoU/Battery" in table and "lr/default" in table
    assert {"train/loss", "val/loss"} <= set(table) and not any(c.endswith(("_step", "_epoch")) for c in table)
    assert 0 <= metrics["val/mIoU"] <= 1
    ckpt = torch.load(run_dir / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["cfg"]["data"]["classes"][10] == "Clothing"
    assert any(k.startswith("model.encoder.") for k in ckpt["state_dict"])
    best_epoch = int(val.loc[val["val/mIoU"].idxmax(), "epoch"])
    assert ckpt["epoch"] == best_epoch  # best.ckpt holds the epoch with the highest val mIoU


def test_resume_auto_finds_the_newest_run(tmp_path):
    runs = tmp_path / "runs"
    for name in ("old", "new"):
        (runs / "exp" / name / "checkpoints").mkdir(parents=True)
        (runs / "exp" / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
    found = find_resume_checkpoint("auto", runs, "exp")
    assert found == runs / "exp" / "new" / "checkpoints" / "last.ckpt"
    with pytest.raises(FileNotFoundError, match="no earlier run of 'other'"):
        find_resume_checkpoint("auto", runs, "other")


@pytest.mark.parametrize("override, message", [
    ("+optimizer.lrr=0.1", "unknown config key 'optimizer.lrr'; did you mean optimizer.lr"),
    ("+trainer.max_epoch=3", "did you mean trainer.max_epochs"),
    ("+data.batchsize=3", "did you mean data.batch_size"),
    ("+model.encoder=resnet18", "unknown config key 'model.encoder'; did you mean model.decoder, model.encoder_name"),
])
def test_config_typo_fails_before_training(synthetic_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        run_module.train(config(synthetic_root, tmp_path, override), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "quickstart" / "nan"
    original = SegmentationModule._loss

    def poisoned(self, out, target):
        loss = original(self, out, target)
        return loss * math.nan if self.training and self.current_epoch == 1 else loss

    monkeypatch.setattr(SegmentationModule, "_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1 .*last good checkpoint is kept"):
        run_module.train(config(synthetic_root, tmp_path, "trainer.max_epochs=3"), run_dir)
    last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_ddp_validation_equals_single_process(synthetic_root, tmp_path):
    """9 val images, batch 3, 2 gloo processes (5 and 4 images): no image counted twice, exactly the
    same mIoU, and val/loss the mean over images, not a mean of the two processes' means."""
    coco = json.loads((synthetic_root / "val.json").read_text())
    coco["images"] = coco["images"][:9]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in {im["id"] for im in coco["images"]}]
    (tmp_path / "val9.json").write_text(json.dumps(coco))  # not in synthetic_root: other tests list its files
    cfg = plain_config(config(synthetic_root, tmp_path, f"data.val_ann={tmp_path / 'val9.json'}"))
    torch.manual_seed(0)
    module = SegmentationModule(cfg)
    results = []
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        datamodule = TrashDataModule(**cfg["data"], augment=cfg["augment"])
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
                            use_distributed_sampler=False, enable_model_summary=False)
        results.append(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    single, ddp = results
    assert ddp["val/mIoU"] == pytest.approx(single["val/mIoU"], abs=1e-7)
    assert ddp["val/pixel_acc"] == pytest.approx(single["val/pixel_acc"], abs=1e-7)
    assert ddp["val/mIoU_per_image"] == pytest.approx(single["val/mIoU_per_image"], abs=1e-7)
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-6)


def test_schedule_is_sized_from_the_trainers_estimate(synthetic_root, tmp_path):
    """max_steps=9 with 6 batches an epoch: a one-epoch warm-up ends at step 6 (not 9 // max_epochs),
    then poly decays over the 3 steps left."""
    cfg = config(synthetic_root, tmp_path, "trainer.max_epochs=-1", "trainer.max_steps=9", "trainer.log_every_n_steps=1",
                 "scheduler.warmup_steps=0", "+scheduler.warmup_epochs=1", "model.encoder_depth=3",
                 "model.decoder.decoder_channels=[16,8,8]")
    run_dir = tmp_path / "runs" / "quickstart" / "steps"
    run_module.train(cfg, run_dir)
    lrs = pd.read_csv(run_dir / "metrics.csv")["lr/default"].dropna().tolist()
    expected = [3e-3 * (s + 1) / 6 for s in range(6)] + [3e-3 * (1 - s / 3) ** 0.9 for s in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_unbounded_run_cannot_size_poly(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="scheduler poly needs the run's length.*trainer.max_time alone cannot size it"):
        run_module.train(config(synthetic_root, tmp_path, "trainer.max_epochs=-1", "trainer.max_time=00:00:10:00"),
                         tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_max_time_before_the_schedule_ends_is_one_warning(synthetic_root, tmp_path, caplog):
    cfg = config(synthetic_root, tmp_path, "trainer.max_epochs=1000", "trainer.max_time=00:00:00:03",
                 "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]")
    with pytest.warns(UserWarning, match=r"trainer.max_time will stop this run at about step \d+ of the 6000 that the poly"):
        run_module.train(cfg, tmp_path / "runs" / "quickstart" / "timed")
    assert any("trainer.max_time stopped the run at step" in r.getMessage() for r in caplog.records)


EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_passes_the_key_check(name):
    from trashseg.training.config_keys import check_config

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"])
    check_config(cfg)
    assert cfg.experiment_name == name


class Killed(Exception):
    """Stands for a kill: the process ends where it is, with no checkpoint of its own."""


def straight_and_resumed(synthetic_root, tmp_path, monkeypatch, overrides, kill_step, checkpoint_step):
    """The last.ckpt of a run never stopped, and of the same run killed at `kill_step` and resumed from
    its last checkpoint (written at `checkpoint_step`): what an exact resume must make equal."""
    straight = tmp_path / "runs" / "quickstart" / "straight"
    run_module.train(config(synthetic_root, tmp_path, *overrides), straight)

    def kill(self, outputs, batch, batch_idx):
        if self.global_step == kill_step:
            raise Killed

    stopped = tmp_path / "runs" / "quickstart" / "stopped"
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(SegmentationModule, "on_train_batch_end", kill, raising=False)
        run_module.train(config(synthetic_root, tmp_path, *overrides), stopped)
    last = stopped / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == checkpoint_step
    run_module.train(config(synthetic_root, tmp_path, *overrides, f"resume={last}"), tmp_path / "runs" / "unused")
    return [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (straight, stopped)]


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [["averaging=ema", "averaging.decay=0.5"],
                                       ["averaging=swa", "averaging.swa_epoch_start=1", "averaging.bn_batches=2"]],
                         ids=["ema", "swa"])
def test_resume_restores_the_weight_average_exactly(synthetic_root, tmp_path, monkeypatch, averaging):
    """2 epochs of 6 steps, validated (and checkpointed) every 3: killed at step 11 and resumed from the
    mid-epoch checkpoint of step 9, the run ends with the same training weights, average and averaging
    state as one never stopped (EMA: 9 updates before; SWA: epoch 1's average and BatchNorm statistics)."""
    overrides = ["trainer.max_epochs=2", "trainer.val_check_interval=0.5", "trainer.deterministic=true",
                 "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", *averaging]
    a, b = straight_and_resumed(synthetic_root, tmp_path, monkeypatch, overrides, kill_step=11, checkpoint_step=9)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("state_dict", "current_model_state", "averaging_state"):  # the average, the weights, its counter
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert not torch.equal(a["state_dict"]["model.head.0.weight"], a["current_model_state"]["model.head.0.weight"])


def test_resume_accepts_options_added_since_the_checkpoint_when_off():
    """A run saved before `averaging` / `optimizer.layer_decay` existed resumes when they are null
    (their default), and is refused when the resume turns one on."""
    from trashseg.training.resuming.changes import check_resume_config

    saved = {"optimizer": {"name": "adamw", "lr": 1e-3}, "seed": 1}
    off = {"optimizer": {"name": "adamw", "lr": 1e-3, "layer_decay": None}, "seed": 1, "averaging": None}
    assert check_resume_config(saved, off, "last.ckpt") == {}
    with pytest.raises(ValueError, match=r"optimizer\.layer_decay \(None -> 0\.9\)"):
        check_resume_config(saved, {**off, "optimizer": {**off["optimizer"], "layer_decay": 0.9}}, "last.ckpt")


def test_a_run_folder_in_use_is_refused_in_one_line(synthetic_root, tmp_path):
    """Two train.py started in the same second get the same time-stamped folder from Hydra: the second
    stops before writing anything instead of interleaving its metrics and checkpoints with the first's."""
    from trashseg.training.callbacks.run_folder import RunFolderBusy, claimed

    run_dir = tmp_path / "runs" / "quickstart" / "same-second"
    with claimed(run_dir):  # the first run, still training
        with pytest.raises(RunFolderBusy, match=r"in use by another train\.py .* own hydra\.run\.dir"):
            run_module.train(config(synthetic_root, tmp_path), run_dir)
        assert [p.name for p in run_dir.iterdir()] == [".train.lock"]
    assert not run_dir.exists()  # the claim made the folder; left empty, it is removed with the lock
    run_module.train(config(synthetic_root, tmp_path), run_dir)  # free again
    assert (run_dir / "metrics.csv").is_file() and not (run_dir / ".train.lock").exists()


def test_only_the_first_node_claims_a_shared_run_folder(tmp_path, monkeypatch):
    """Nodes launched by hand (NODE_RANK=1, no RANK or LOCAL_RANK yet) share rank 0's folder: a second
    node that claimed it too would stop, and the first would wait for it forever (CI 2026-12-02)."""
    from trashseg.training.callbacks.run_folder import RunFolderBusy, claimed

    run_dir = tmp_path / "shared"
    with claimed(run_dir):  # node 0
        monkeypatch.setenv("NODE_RANK", "1")
        with claimed(run_dir):  # node 1 passes without a claim of its own
            pass
        monkeypatch.setenv("NODE_RANK", "0")
        with pytest.raises(RunFolderBusy):
            with claimed(run_dir):
                pass
