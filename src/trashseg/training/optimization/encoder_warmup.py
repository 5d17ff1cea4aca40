"""Train the decoder and head alone on a frozen pretrained encoder for the first optimizer steps
(`freeze_encoder_steps: N`), then everything.

A freshly initialised decoder sends large, random gradients into the encoder at the start of
fine-tuning and wears away the ImageNet features before it can use them; holding the encoder
still until the decoder has learned to read it is the usual cure (Lightning's `BackboneFinetuning`
does it by epochs). While frozen, the encoder takes no gradient (its backward pass is skipped,
so those steps are cheaper), and its BatchNorm layers stay in eval mode, normalising with the
statistics the weights were trained with instead of overwriting them with a few batches'.

The state is a function of the global step, so a resumed run freezes exactly what an
uninterrupted one would. The optimizer holds the encoder's parameters from the start (their
groups and learning rates are the configured ones); while frozen they have no gradient, and
torch's optimizers skip them: no update, no weight decay, no moment.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def encoder_of(pl_module: L.LightningModule) -> nn.Module:
    encoder = getattr(pl_module.model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"freeze_encoder_steps: the model ({type(pl_module.model).__name__}) has no `encoder` "
                         "submodule to freeze (segmentation-models-pytorch models have one); set freeze_encoder_steps=0")
    return encoder


class FrozenEncoderWarmup(Callback):
    """Encoder frozen (no gradient, BatchNorm in eval mode) while `trainer.global_step < steps`."""

    def __init__(self, steps: int):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"freeze_encoder_steps must be a whole number of optimizer steps >= 0; got {steps!r}")
        self.steps = steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        encoder_of(pl_module)
        ddp_kwargs = getattr(trainer.strategy, "_ddp_kwargs", None)
        if trainer.world_size > 1 and ddp_kwargs is not None and not ddp_kwargs.get("find_unused_parameters"):
            # DDP's reducer waits for a gradient of every parameter it was built with; a frozen encoder sends none.
            raise ValueError("freeze_encoder_steps with DDP needs trainer.strategy=ddp_find_unused_parameters_true "
                             "(the frozen encoder gets no gradient to reduce)")

    def frozen(self, trainer: L.Trainer) -> bool:
        return trainer.global_step < self.steps

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # Every batch, not once: Lightning puts the whole model back in train mode after each validation.
        encoder = encoder_of(pl_module)
        frozen = self.frozen(trainer)
        encoder.requires_grad_(not frozen)
        if frozen:
            for module in encoder.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        else:
            encoder.train()  # BatchNorm back to batch statistics (a walk over the modules: negligible)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run that ends frozen (decoder-only training) hands back a model with every parameter trainable.
        encoder_of(pl_module).requires_grad_(True)
