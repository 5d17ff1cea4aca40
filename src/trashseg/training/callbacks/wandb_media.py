"""W&B extras at the end of each validation: the confusion matrix, summed over every process's
images (the module's `last_confusion`), and overlays of a few val images (image, ground truth,
prediction, with class names). Skipped without a W&B logger."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from trashseg.data.classes import IGNORE_INDEX


class WandbMedia(L.Callback):
    # Not on_validation_epoch_end: Lightning calls the callbacks' before the module's, which sets last_confusion.
    def on_validation_end(self, trainer: L.Trainer, module) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero or trainer.sanity_checking:
            return
        import wandb

        run = loggers[0].experiment
        labels = dict(enumerate(module.classes))
        confusion = getattr(module, "last_confusion", None)
        media = {}
        if confusion is not None:
            rows = [[truth] + row for truth, row in zip(module.classes, confusion.tolist())]
            media["val/confusion_matrix"] = wandb.Table(columns=["truth \\ prediction"] + module.classes, data=rows)
        batch = module.overlay_batch
        if batch is not None:
            media["val/overlays"] = [
                wandb.Image(image.permute(1, 2, 0).numpy(), masks={
                    "ground_truth": {"mask_data": mask.masked_fill(mask == IGNORE_INDEX, 0).numpy(), "class_labels": labels},
                    "prediction": {"mask_data": pred.numpy(), "class_labels": labels},
                })
                for image, mask, pred in zip(batch["image"], batch["mask"], batch["pred"])
            ]
        run.log(media | {"epoch": trainer.current_epoch}, commit=False)
