"""Weight averaging (averaging=ema | swa): hand-computed averages, BatchNorm statistics of the
SWA average, what validation and best.ckpt hold, and the config's one-line errors."""


import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from trashseg.inference.checkpoint import load_checkpoint
from trashseg.training import run as run_module
from trashseg.data.datamodule import TrashDataModule
from trashseg.training.callbacks.averaging import SWA, build_averaging
from trashseg.training.config_keys import ConfigError, check_config
from trashseg.training.module import SegmentationModule

from small_runs import small_quickstart


class Descent(L.LightningModule):
    """One weight w (1.0 at the start) and loss w * 1: plain SGD with lr 0.1 takes w to 0.9, 0.8, 0.7, ...
    A BatchNorm sees the batches' images, so its statistics can be checked by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.norm = nn.BatchNorm1d(1)

    def forward(self, images):
        return self.norm(images.view(-1, 1))

    def training_step(self, batch, batch_idx):
        self(batch["image"])
        return self.w.sum()

    def validation_step(self, batch, batch_idx):
        self.log("w_validated", self.w.item())

    def configure_optimizers(self):
        return torch.optim.SGD([self.w, *self.norm.parameters()], lr=0.1)


class Batches(L.LightningDataModule):
    """Two batches an epoch: images [1, 3] and [5, 7] (means 2 and 6, unbiased variances 2 and 2)."""

    def train_dataloader(self):
        return DataLoader([{"image": torch.tensor([1.0, 3.0])}, {"image": torch.tensor([5.0, 7.0])}], batch_size=None)

    def val_dataloader(self):
        return DataLoader([{"image": torch.tensor([0.0, 0.0])}], batch_size=None)


def fit(tmp_path, averaging: dict, max_epochs: int = 1, max_steps: int = -1, validate: bool = False):
    """Fit Descent with the callback `averaging` names; a checkpoint after every optimizer step."""
    torch.manual_seed(0)
    steps = L.pytorch.callbacks.ModelCheckpoint(tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, callbacks=[build_averaging(averaging, max_epochs), steps],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        limit_val_batches=1 if validate else 0, num_sanity_val_steps=0)
    module = Descent()
    trainer.fit(module, datamodule=Batches())
    return module, trainer


def saved(tmp_path, step: int) -> tuple[float, float]:
    """(averaged w, current w) in the checkpoint of `step`."""
    ckpt = torch.load(tmp_path / f"step={step}.ckpt", weights_only=True)
    return ckpt["state_dict"]["w"].item(), ckpt["current_model_state"]["w"].item()


def test_ema_weights_equal_the_hand_computed_average_after_3_steps(tmp_path):
    module, _ = fit(tmp_path, {"name": "ema", "decay": 0.5}, max_epochs=2, max_steps=3)
    # w: 0.9, 0.8, 0.7; the first update copies, then avg = 0.5 avg + 0.5 w
    assert saved(tmp_path, 1) == pytest.approx((0.9, 0.9))
    assert saved(tmp_path, 2) == pytest.approx((0.85, 0.8))
    assert saved(tmp_path, 3) == pytest.approx((0.775, 0.7))
    assert module.w.item() == pytest.approx(0.775)  # the model ends with the average


def test_before_the_first_update_checkpoints_and_validation_hold_the_current_weights(tmp_path):
    """Lightning would save (and validate) the initial weights, w = 1.0, until the average starts."""
    module, trainer = fit(tmp_path, {"name": "ema", "decay": 0.5, "update_starting_at_step": 2}, max_epochs=2, validate=True)
    assert saved(tmp_path, 1) == pytest.approx((0.9, 0.9))
    assert saved(tmp_path, 2) == pytest.approx((0.8, 0.8))
    assert saved(tmp_path, 3) == pytest.approx((0.7, 0.7))  # the first update (step index 2) copies w
    assert saved(tmp_path, 4) == pytest.approx((0.65, 0.6))
    assert trainer.callback_metrics["w_validated"].item() == pytest.approx(0.65)  # epoch 2 validated the average


def test_swa_averages_epoch_ends_and_recomputes_batch_norm_statistics(tmp_path):
    """3 epochs of 2 steps, averaging from epoch 2: w at the ends of epochs 2 and 3 is 0.6 and 0.4."""
    module, trainer = fit(tmp_path, {"name": "swa", "swa_epoch_start": 2}, max_epochs=3)
    assert [saved(tmp_path, s)[0] for s in range(1, 7)] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.6, 0.5])
    [callback] = [c for c in trainer.callbacks if isinstance(c, SWA)]
    average = callback._average_model
    assert int(average.n_averaged) == 2 and module.w.item() == pytest.approx(0.5)
    # The statistics of one pass, cumulative: mean of the batch means (2, 6), mean of the variances (2, 2).
    ckpt = torch.load(tmp_path / "step=6.ckpt", weights_only=True)
    assert ckpt["state_dict"]["norm.running_mean"].item() == pytest.approx(4.0)
    assert ckpt["state_dict"]["norm.running_var"].item() == pytest.approx(2.0)
    # the training model's own statistics (momentum 0.1 over 6 batches) stay with it
    assert ckpt["current_model_state"]["norm.running_mean"].item() != pytest.approx(4.0)


def test_swa_fraction_of_epochs(tmp_path):
    fit(tmp_path, {"name": "swa", "swa_epoch_start": 0.5}, max_epochs=4)  # int(4 * 0.5) = epoch 2 of 4, 1-based
    assert [saved(tmp_path, s)[0] for s in (2, 4, 6, 8)] == pytest.approx([0.8, 0.6, 0.5, 0.4])


def train_config(synthetic_root, tmp_path, *overrides):
    return small_quickstart(synthetic_root, tmp_path, "trainer.max_epochs=2", *overrides, batch_size=8)


def test_validation_best_ckpt_and_inference_use_the_averaged_weights(synthetic_root, tmp_path):
    cfg = train_config(synthetic_root, tmp_path, "averaging=ema", "averaging.decay=0.9", "trainer.max_epochs=1")
    run_dir = tmp_path / "runs" / "ema"
    run_module.train(cfg, run_dir)
    best = torch.load(run_dir / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    # one epoch: last.ckpt is written at the same validation and keeps the training weights beside the average
    last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert best["global_step"] == last["global_step"]
    averaged, current = best["state_dict"], last["current_model_state"]
    assert averaged.keys() == current.keys() and all(torch.equal(averaged[k], last["state_dict"][k]) for k in averaged)
    assert not torch.equal(averaged["model.head.0.weight"], current["model.head.0.weight"])
    assert int(last["averaging_state"]["n_averaged"]) == last["global_step"]  # one update per step
    assert not {"current_model_state", "averaging_state", "optimizer_states"} & best.keys()  # resuming reads last.ckpt
    # inference rebuilds the model from state_dict: the average
    loaded = load_checkpoint(run_dir / "checkpoints/best.ckpt")
    assert torch.equal(loaded.model.state_dict()["head.0.weight"], averaged["model.head.0.weight"])
    # the val/mIoU logged for best.ckpt's epoch is what the averaged weights score
    module = SegmentationModule(best["hyper_parameters"]["cfg"])
    module.load_state_dict(averaged)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    plain = best["hyper_parameters"]["cfg"]
    rescored = trainer.validate(module, datamodule=TrashDataModule(**plain["data"], augment=plain["augment"]), verbose=False)
    logged = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/mIoU"])
    assert logged.loc[logged["epoch"] == best["epoch"], "val/mIoU"].item() == pytest.approx(rescored[0]["val/mIoU"], abs=1e-6)


@pytest.mark.parametrize("override, message", [
    ("+averaging.decy=0.9", "unknown config key 'averaging.decy'; did you mean averaging.decay"),
    ("+averaging.swa_epoch=3", "unknown config key 'averaging.swa_epoch'; did you mean averaging.swa_epoch_start"),
])
def test_averaging_key_typo_is_one_line(synthetic_root, tmp_path, override, message):
    choice = "averaging=swa" if "swa" in override else "averaging=ema"
    with pytest.raises(ConfigError, match=message) as err:
        check_config(train_config(synthetic_root, tmp_path, choice, override))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cfg, max_epochs, message", [
    ({"name": "emma"}, 3, r"averaging.name = 'emma': choose ema or swa"),
    ({"name": "ema", "decay": 1.5}, 3, r"averaging.decay = 1.5: give a number in \[0, 1\]"),
    ({"name": "swa", "swa_epoch_start": 0}, 3, r"averaging.swa_epoch_start = 0: give an epoch"),
    ({"name": "swa", "swa_epoch_start": 0.75}, -1, r"fraction of trainer.max_epochs, which this run does not set"),
])
def test_bad_averaging_values_are_one_line(cfg, max_epochs, message):
    with pytest.raises(ValueError, match=message) as err:
        build_averaging(cfg, max_epochs)
    assert "\n" not in str(err.value)
