"""A step that 16-mixed's GradScaler skips leaves no trace: the forward that overflowed had already
moved BatchNorm's running statistics, and they go back to their values before that step, so
nothing non-finite reaches validation, last.ckpt or the EMA (which leaves the step out). On the
CPU with a float16 GradScaler given directly (Lightning would train 16-mixed as bf16 there)."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

from trashseg.checkpoint import read_checkpoint
from trashseg.data.datamodule import TrashDataModule
from trashseg.data.normalize import Normalize
from trashseg.training.run_config import plain_config
from trashseg.training.callbacks.averaging import build_averaging
from trashseg.training.module import SegmentationModule

from small_runs import small_quickstart

SKIPPED = 1  # the optimizer step that overflows


class Inject(L.Callback):
    """Marks the training batches of step SKIPPED, and records the BatchNorm buffers before its first
    batch and after its last."""

    def __init__(self):
        self.active = False
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    @staticmethod
    def norm_buffers(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.model.named_buffers() if "running_" in k or "batches" in k}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.active = trainer.global_step == SKIPPED
        if self.active and not self.before:
            self.before = self.norm_buffers(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.active:
            self.after = self.norm_buffers(module)
        self.active = False


def fit(synthetic_root, tmp_path, monkeypatch, fault: str, accumulate: int):
    inject = Inject()
    original_normalize, original_loss = Normalize.forward, SegmentationModule._loss

    def overflowing_input(self, images):  # activations past float16's range: the BatchNorm statistics turn NaN
        x = original_normalize(self, images)
        return x * 1e30 if inject.active else x

    def overflowing_gradients(self, out, target):  # a finite loss whose backward overflows
        if inject.active:
            out = out * 1.0
            out.register_hook(lambda grad: torch.full_like(grad, math.inf))
        return original_loss(self, out, target)

    if fault == "nan_forward":
        monkeypatch.setattr(Normalize, "forward", overflowing_input)
    else:
        monkeypatch.setattr(SegmentationModule, "_loss", overflowing_gradients)
    cfg = plain_config(small_quickstart(synthetic_root, tmp_path, "averaging=ema", "averaging.decay=0.5",
                                                      batch_size=4 // accumulate))  # 24 images: 4 steps fit
    torch.manual_seed(0)
    module = SegmentationModule(cfg)
    ema = build_averaging(cfg["averaging"])
    last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", enable_version_counter=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4 * accumulate,
                        accumulate_grad_batches=accumulate, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False, callbacks=[inject, ema, last],
                        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**8))])
    datamodule = TrashDataModule(**cfg["data"], augment=cfg["augment"])
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, ema, inject, datamodule, tmp_path / "checkpoints" / "last.ckpt"


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


# nan_forward: the NaN reaches the statistics in the forward; inf_gradients: the loss is finite, the scaler skips
# the step all the same, and its (finite) statistics go back too; accumulate 2: both forwards of the step undone.
@pytest.mark.parametrize("fault, accumulate", [("nan_forward", 1), ("inf_gradients", 1), ("nan_forward", 2)])
def test_a_skipped_16_mixed_step_leaves_no_trace_in_buffers_checkpoint_or_ema(synthetic_root, tmp_path, monkeypatch,
                                                                               fault, accumulate):
    trainer, module, ema, inject, datamodule, last_ckpt = fit(synthetic_root, tmp_path, monkeypatch, fault, accumulate)
    assert trainer.global_step == 4 and trainer.precision_plugin.scaler.get_scale() == 2.0**7  # one step skipped
    # the buffers after the skipped step are the ones before it (the run's own BatchNorms, batch count too)
    assert inject.before and inject.before.keys() == inject.after.keys()
    for name, value in inject.before.items():
        assert torch.equal(inject.after[name], value), f"{name} changed in the skipped step"
    # nothing non-finite anywhere after it: the model's buffers, its logits in eval, last.ckpt, the EMA
    assert all_finite(dict(module.named_buffers()))
    module.eval()
    images = next(iter(datamodule.val_dataloader()))["image"]
    with torch.no_grad():
        assert torch.isfinite(module(images)).all()
        assert torch.isfinite(ema._average_model.module(images)).all()
    checkpoint = read_checkpoint(last_ckpt)  # weights only, as every reader of a checkpoint
    assert all_finite(checkpoint["state_dict"]) and all_finite(checkpoint["current_model_state"])
    assert all_finite(dict(ema._average_model.module.state_dict()))
    # the EMA left the skipped step out: 4 steps, 3 updates
    assert int(ema._average_model.n_averaged) == 3
