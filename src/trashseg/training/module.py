"""The LightningModule: normalise on the device, loss (with optional aux head and optional
distillation from teacher checkpoints), the competition metric on validation, optimizer groups
and a per-step schedule."""

from __future__ import annotations

import math
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from trashseg.checkpoint.rng import capture as capture_rng, restore as restore_rng
from trashseg.data.classes import IGNORE_INDEX
from trashseg.data.normalize import Normalize
from trashseg.memory_format import channels_last_input, to_channels_last, wants_channels_last
from trashseg.metric import SegmentationMetric
from trashseg.models import build_model
from trashseg.run_layout import LAST

from .callbacks.nonfinite import BuffersKeptOnSkip, NonFiniteStreak
from .distill import build_distillation
from .losses import WeightedLoss
from .optimization.optimizer import build_optimizer, groups_table
from .optimization.schedules import build_scheduler, horizon_problem


# Validation metrics are summed across processes by torchmetrics before they are logged.
warnings.filterwarnings("ignore", r"It is recommended to use `self.log\('val/.*sync_dist=True")


UNLABELLED_POSITION = "distill_unlabelled_position"  # checkpoint key: images of the unlabelled stream trained on


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


NONFINITE_FIX = "Lower optimizer.lr, add gradient clipping (trainer.gradient_clip_val) or use precision 32-true"


class SegmentationModule(L.LightningModule):
    def __init__(self, cfg: dict):
        """`cfg`: the resolved run config as plain containers (stored in every checkpoint)."""
        super().__init__()
        self.save_hyperparameters({"cfg": cfg}, logger=False)  # loggers get the flat config instead
        self.cfg = cfg
        self.classes = list(cfg["data"]["classes"])
        self.model = build_model(cfg["model"], len(self.classes))
        self.normalize = Normalize(cfg["data"]["mean"], cfg["data"]["std"])
        self.criterion = WeightedLoss(cfg["loss"]["terms"], num_classes=len(self.classes))
        self.aux_weight = float(cfg["loss"].get("aux_weight", 0.4))
        self.val_metric = SegmentationMetric(len(self.classes), self.classes)
        # val/loss: the mean over images of each image's loss, summed across processes (a mean of per-rank
        # means is wrong when ranks hold different numbers of images).
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.schedule_steps: float | None = None  # optimizer steps the lr schedule is sized for
        wandb_cfg = cfg.get("logger", {}).get("wandb", {})
        self.overlays_wanted = int(wandb_cfg.get("overlays") or 0) if wandb_cfg.get("enabled") else 0
        self.overlay_batch: dict | None = None
        self._resumed_rng: dict | None = None
        limit = cfg.get("nonfinite_losses_in_a_row")
        self.nonfinite_limit = NonFiniteStreak(3 if limit is None else int(limit)).limit  # a bad value stops here
        self.nonfinite: NonFiniteStreak | None = None  # 16-mixed: skipped steps in a row, counted from on_train_start
        self.buffers_kept: BuffersKeptOnSkip | None = None  # 16-mixed: a skipped step's forward undone in the buffers
        self.channels_last = False  # decided in setup(), once the device is known
        # Teachers load here, before any run file is written: a bad path or class list stops the start.
        self.distiller, self.unlabelled = build_distillation(cfg, self.classes)

    def setup(self, stage: str) -> None:
        # Before the optimizer is built: weights and inputs share one memory format (trashseg.memory_format).
        self.channels_last = wants_channels_last(self.cfg.get("channels_last"), self.trainer.strategy.root_device)
        if self.channels_last:
            to_channels_last(self.model)

    def forward(self, images: torch.Tensor):
        x = self.normalize(images)
        return self.model(channels_last_input(x) if self.channels_last else x)

    def _loss(self, out, target: torch.Tensor) -> torch.Tensor:
        """The loss on labels (validation's too)."""
        if isinstance(out, dict):
            return self.criterion(out["out"], target) + self.aux_weight * self.criterion(out["aux"], target)
        return self.criterion(out, target)

    def _distill_loss(self, images: torch.Tensor, out, target: torch.Tensor) -> torch.Tensor:
        """The KL term on the labelled batch's labelled pixels and, with unlabelled sources, on a
        batch of those images' pixels (padding and borders excluded)."""
        logits = out["out"] if isinstance(out, dict) else out
        parts = [(images, logits, target != IGNORE_INDEX)]
        if self.unlabelled is not None:
            free_images, valid = self.unlabelled.next(self.trainer.world_size, self.trainer.global_rank)
            free_images, valid = free_images.to(self.device, non_blocking=True), valid.to(self.device, non_blocking=True)
            free_out = self(free_images)
            parts.append((free_images, free_out["out"] if isinstance(free_out, dict) else free_out, valid))
        return self.distiller.kd(parts)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        loss = self._loss(out, batch["mask"])
        batch_size = len(batch["image"])
        if self.distiller is not None:
            label_loss, kd = loss, self._distill_loss(batch["image"], out, batch["mask"])
            loss = self.distiller.combine(label_loss, kd)
            # the parts before weighting: train/loss = (1 - alpha) x train/ce + alpha x train/kd
            self.log_dict({"train/ce": label_loss, "train/kd": kd}, on_step=True, on_epoch=False, batch_size=batch_size)
        if self.nonfinite is not None:  # GradScaler skips a non-finite step; flags read every log_every_n_steps
            self.nonfinite.add(loss)
            if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
                self._stop_on_nonfinite_streak()
        elif not torch.isfinite(loss):  # a host sync, needed: nothing would skip this step, its update makes NaN weights
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {self.current_epoch} step {self.global_step}; training stopped and "
                f"the last good checkpoint is kept ({LAST}). {NONFINITE_FIX}")
        # Per step only: an epoch aggregate would reach the logger after the epoch's checkpoint is written,
        # so a kill in between would lose it for good (training.callbacks.history).
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        return loss

    def _stop_on_nonfinite_streak(self) -> None:
        streak = self.nonfinite
        if streak.exceeded(lambda t: self.trainer.strategy.reduce(t, reduce_op="max")):
            raise NonFiniteLossError(
                f"loss was NaN or inf in {streak.longest} training steps in a row (nonfinite_losses_in_a_row="
                f"{streak.limit}), seen at epoch {self.current_epoch} step {self.global_step}; GradScaler skipped those "
                f"steps, training stopped and the last good checkpoint is kept ({LAST}). {NONFINITE_FIX}")

    def on_train_epoch_end(self) -> None:
        if self.nonfinite is not None:
            self._stop_on_nonfinite_streak()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.buffers_kept is not None:
            self.buffers_kept.before_forward()
        optimizer = self.optimizers().optimizer if hasattr(self.optimizers(), "optimizer") else self.optimizers()
        self.log_dict({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}, on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.buffers_kept is not None:
            self.buffers_kept.before_step()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, before any on_train_batch_end: callbacks (EMA, checkpoints) see the buffers put back.
        if self.buffers_kept is not None:
            self.buffers_kept.after_step()

    def last_step_skipped(self) -> bool:
        """Whether GradScaler skipped the last optimizer step (a host sync; False without a scaler)."""
        return self.buffers_kept is not None and self.buffers_kept.last_step_skipped()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        target = batch["mask"]
        for i in range(len(target)):  # per image: the mean does not depend on batching or on the number of ranks
            labelled = (target[i] != IGNORE_INDEX).any().float()  # a weight on the device: no host sync
            self.val_loss.update(self._loss(logits[i : i + 1], target[i : i + 1]), weight=labelled)
        preds = logits.argmax(1)
        self.val_metric.update(preds, target)
        if batch_idx == 0 and self.overlays_wanted:
            n = self.overlays_wanted
            self.overlay_batch = {"image": batch["image"][:n].cpu(), "mask": target[:n].cpu(), "pred": preds[:n].cpu()}

    def on_validation_epoch_start(self) -> None:
        # States of this process's own: ddp_spawn hands each process the module's tensors in shared memory,
        # where every rank would add into one confusion matrix (and a late rank's sum be read half done).
        self.val_metric.reset()
        self.val_loss.reset()

    def on_validation_epoch_end(self) -> None:
        with self.val_metric.sync_context():  # W&B's confusion matrix (wandb_media): the sum over ranks
            self.last_confusion = self.val_metric.confusion.detach().cpu()
        results = self.val_metric.compute() | {"loss": self.val_loss.compute()}  # summed over ranks, too
        self.log_dict({f"val/{k}": v.float() for k, v in results.items()}, sync_dist=False)  # already summed over ranks
        self.val_metric.reset()
        self.val_loss.reset()

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.cfg["optimizer"])
        if self.trainer.is_global_zero:
            print("optimizer groups:\n" + groups_table(optimizer.param_groups))
        # Sized from the Trainer's own estimate (max_steps, max_epochs, limit_train_batches, accumulation);
        # math.inf for a run bounded only by max_time, which only unsized schedules accept.
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if trainer.train_dataloader is None:  # max_epochs=-1: the estimate did not load the data
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        per_epoch = math.inf if math.isinf(batches) else max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        scheduler = build_scheduler(optimizer, self.cfg["scheduler"], total, per_epoch)
        world = trainer.world_size
        images = int(self.cfg["data"]["batch_size"]) * world * trainer.accumulate_grad_batches
        if problem := horizon_problem(self.cfg["scheduler"], total, per_epoch, world, images):
            rank_zero_warn(problem)
        self.schedule_steps = total
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng"] = capture_rng(self.device)  # a resumed run draws what an uninterrupted one would (checkpoint.rng)
        wandb_id = getattr(self, "wandb_run_id", None)
        if wandb_id:
            checkpoint["wandb_run_id"] = wandb_id
        if self.unlabelled is not None:
            checkpoint[UNLABELLED_POSITION] = self.unlabelled.position

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resumed_rng = checkpoint.get("rng")
        if self.unlabelled is not None:
            self.unlabelled.position = int(checkpoint.get(UNLABELLED_POSITION, 0))

    def on_train_start(self) -> None:
        # Applied here, after the sanity check, which would otherwise consume random numbers.
        if self._resumed_rng:
            restore_rng(self._resumed_rng, self.device)
            self._resumed_rng = None
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # 16-mixed
            self.nonfinite = NonFiniteStreak(self.nonfinite_limit)
            self.buffers_kept = BuffersKeptOnSkip(self, scaler)

    def on_train_end(self) -> None:
        if self.unlabelled is not None:
            self.unlabelled.close()  # its loader's workers
