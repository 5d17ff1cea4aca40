"""One line when trainer.max_time will stop the run before its lr schedule ends.

A poly or cosine schedule is sized from max_epochs/max_steps; a max_time stop leaves it far from
its end (the lr still high) unless the user hears about it. After the first epoch of this
process the speed is known, so the step max_time will stop at can be predicted."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .optim import SIZED


class ScheduleHorizon(L.Callback):
    def __init__(self, scheduler_name: str):
        self.name = scheduler_name
        self.start: tuple[float, int] | None = None
        self.warned = False

    @staticmethod
    def _timer(trainer: L.Trainer) -> Timer | None:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        return timer if timer is not None and timer.time_remaining() is not None else None

    def _total(self, module) -> float | None:
        total = getattr(module, "schedule_steps", None)
        return total if self.name in SIZED and total is not None and total != float("inf") else None

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self.start = (time.monotonic(), trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        timer, total = self._timer(trainer), self._total(module)
        if self.warned or timer is None or total is None or self.start is None:
            return
        seconds, steps = time.monotonic() - self.start[0], trainer.global_step - self.start[1]
        if seconds <= 0 or steps <= 0:
            return
        reachable = int(trainer.global_step + steps / seconds * max(timer.time_remaining(), 0.0))
        if reachable < total:
            self.warned = True
            rank_zero_warn(
                f"trainer.max_time will stop this run at about step {reachable} of the {int(total)} that the {self.name} "
                "lr schedule is sized for (from trainer.max_epochs / max_steps), so the lr will not reach its end; set "
                "trainer.max_epochs or trainer.max_steps to what fits in the time, or use scheduler=constant")

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        timer, total = self._timer(trainer), self._total(module)
        if timer is not None and total is not None and trainer.global_step < total and timer.time_remaining() <= 0:
            rank_zero_info(f"trainer.max_time stopped the run at step {trainer.global_step} of the {int(total)} the "
                           f"{self.name} lr schedule was sized for")
