"""Learning-rate schedulers that scale each group's own lr, with the checks that a schedule fits
the run: it can be sized (check_sizable), its warm-up and milestones lie inside the run
(horizon_problem), and trainer.max_time will not cut it short (ScheduleHorizon).

Every schedule is one multiplier of the step (LambdaLR), applied to each group's initial lr,
so the ratios between groups stay fixed; an optional linear warm-up precedes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


# Schedules that run to an end: they must know the run's length in optimizer steps.
SIZED = {"poly", "cosine", "cosine_restarts"}
EPOCH_KEYS = ("warmup_epochs", "step_size_epochs", "milestones_epochs")


def check_sizable(cfg: Mapping, total_steps: float, steps_per_epoch: float) -> None:
    """A clear error for a schedule that cannot be sized: an unbounded run (max_epochs=-1 without
    max_steps, e.g. max_time alone) for poly/cosine, an unknown epoch length for epoch-based keys."""
    name = cfg["name"]
    if name in SIZED and math.isinf(total_steps):
        raise ValueError(
            f"scheduler {name} needs the run's length, but trainer.max_epochs=-1 and no trainer.max_steps leave it "
            "unbounded (trainer.max_time alone cannot size it); set trainer.max_epochs or trainer.max_steps, or use "
            "scheduler=constant, step or multistep")
    epoch_keys = [k for k in EPOCH_KEYS if cfg.get(k)]
    if epoch_keys and math.isinf(steps_per_epoch):
        raise ValueError(f"scheduler.{epoch_keys[0]} needs the number of batches per epoch, which an iterable train "
                         "set does not have; give the schedule in steps (scheduler.warmup_steps) instead")


def multiplier(cfg: Mapping, total_steps: float, steps_per_epoch: float) -> Callable[[int], float]:
    """lr multiplier per optimizer step for scheduler `cfg` (a mapping with `name`); `total_steps`
    and `steps_per_epoch` are optimizer steps (math.inf where the run or the epoch is unbounded)."""
    check_sizable(cfg, total_steps, steps_per_epoch)
    name = cfg["name"]
    warmup = int(cfg.get("warmup_steps", 0) or 0)
    if cfg.get("warmup_epochs"):
        warmup += int(cfg["warmup_epochs"]) * steps_per_epoch
    main_steps = max(total_steps - warmup, 1)
    floor = cfg.get("min_lr_ratio", 0.0)

    def schedule(step: int) -> float:
        if name == "constant":
            return 1.0
        if name == "poly":
            return (1 - min(step, main_steps) / main_steps) ** cfg.get("power", 0.9)
        if name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, main_steps) / main_steps))
        if name == "cosine_restarts":
            cycle = max(main_steps // cfg.get("cycles", 3), 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step % cycle) / cycle))
        if name == "step":
            return cfg.get("gamma", 0.1) ** (step // (cfg["step_size_epochs"] * steps_per_epoch))
        if name == "multistep":
            return cfg.get("gamma", 0.1) ** sum(step >= m * steps_per_epoch for m in cfg["milestones_epochs"])
        raise ValueError(f"unknown scheduler {name!r}; choose constant, step, multistep, poly, cosine or cosine_restarts")

    schedule(0)  # fail now, not at the first step, on an unknown name or a missing key

    def with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return schedule(step - warmup)

    return with_warmup


def horizon_problem(cfg: Mapping, total_steps: float, steps_per_epoch: float, world_size: int = 1,
                    images_per_step: int | None = None) -> str | None:
    """One line when a warm-up or a step milestone lies past the run's end, or None. A recipe sized
    on one GPU has 1/N of its optimizer steps on N GPUs (each step sees N times the images): its
    warm-up may then never end, so the lr peaks below its target and never decays."""
    if math.isinf(total_steps):
        return None
    where = (f" ({world_size} processes x {images_per_step // world_size} images = {images_per_step} a step)"
             if images_per_step and world_size > 1 else "")
    warmup = int(cfg.get("warmup_steps", 0) or 0) + int(cfg.get("warmup_epochs", 0) or 0) * steps_per_epoch
    if warmup and warmup >= total_steps:
        return (f"the lr warm-up ({warmup:g} steps) is longer than this run's {int(total_steps)} optimizer steps{where}: "
                f"the lr peaks at {total_steps / warmup:.2f}x optimizer.lr and never decays; scale scheduler.warmup_steps "
                "with the run's steps (docs/training.md, Several GPUs and clusters)")
    milestones = {"step": [cfg.get("step_size_epochs")], "multistep": list(cfg.get("milestones_epochs") or [])}
    late = [m for m in milestones.get(cfg["name"], []) if m and m * steps_per_epoch >= total_steps]
    if late and not math.isinf(steps_per_epoch):
        return (f"scheduler {cfg['name']} milestone(s) at epoch {', '.join(map(str, late))} lie past this run's end "
                f"({int(total_steps)} optimizer steps, {int(steps_per_epoch)} an epoch{where}): the lr never drops there")
    return None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping, total_steps: float, steps_per_epoch: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier(cfg, total_steps, steps_per_epoch))


class ScheduleHorizon(L.Callback):
    """One line when trainer.max_time will stop the run before its lr schedule ends. A poly or cosine
    schedule is sized from max_epochs/max_steps; a max_time stop leaves it far from its end (the lr
    still high) unless the user hears about it. After the first epoch of this process the speed is
    known, so the step max_time will stop at can be predicted."""

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
