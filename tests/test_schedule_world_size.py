"""A recipe sized on one GPU has 1/N of its optimizer steps on N: a warm-up or a milestone past the
run's end is one line, with the processes and the images a step named (simulated world sizes)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trashseg.training.module import SegmentationModule
from trashseg.training.optimization.schedules import horizon_problem, multiplier

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_IMAGES = 2617  # the competition's train.json


def recipe(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=[f"experiment=competition/{name}"]), resolve=False)


def optimizer_steps(cfg: dict, world_size: int) -> tuple[int, int]:
    """(total, per epoch) as Lightning counts them: each process sees 1/N of the images in batches
    of data.batch_size, and a step accumulates trainer.accumulate_grad_batches of them."""
    batches = math.ceil(math.ceil(TRAIN_IMAGES / world_size) / cfg["data"]["batch_size"])
    per_epoch = math.ceil(batches / cfg["trainer"]["accumulate_grad_batches"])
    return per_epoch * cfg["trainer"]["max_epochs"], per_epoch


@pytest.mark.parametrize("name", ["upernet_swin_b", "segformer_mitb5"])
def test_the_one_gpu_recipes_warm_up_past_their_end_on_eight_gpus(name):
    cfg = recipe(name)
    sched = cfg["scheduler"]
    one, _ = optimizer_steps(cfg, 1)
    assert horizon_problem(sched, one, one / cfg["trainer"]["max_epochs"]) is None  # sized for one GPU: fine
    eight, per_epoch = optimizer_steps(cfg, 8)
    images = cfg["data"]["batch_size"] * 8 * cfg["trainer"]["accumulate_grad_batches"]
    message = horizon_problem(sched, eight, per_epoch, world_size=8, images_per_step=images)
    assert message is not None and "\n" not in message
    peak = eight / sched["warmup_steps"]
    assert f"peaks at {peak:.2f}x" in message and f"{eight} optimizer steps (8 processes x 16 images = 128" in message
    # and that is the lr the schedule really gives at the run's last step: still warming up
    lr = multiplier(sched, eight, per_epoch)
    assert lr(eight - 1) == pytest.approx(peak) and lr(eight - 1) < 1


def test_a_milestone_past_the_end_is_named_and_one_inside_is_not():
    multistep = {"name": "multistep", "milestones_epochs": [30, 40], "gamma": 0.1}
    assert "epoch 40 lie past" in horizon_problem(multistep, total_steps=35 * 10, steps_per_epoch=10)
    assert horizon_problem(multistep, total_steps=50 * 10, steps_per_epoch=10) is None
    assert horizon_problem({"name": "poly", "warmup_steps": 0}, 100, 10) is None
    assert horizon_problem({"name": "poly", "warmup_steps": 500}, math.inf, math.inf) is None  # max_time runs


def test_the_module_warns_with_the_trainers_world_size():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=["experiment=quickstart", "scheduler.warmup_steps=300"]),
                                     resolve=True)
    module = SegmentationModule(cfg)
    # 8 processes, 12 batches each an epoch, 12 epochs: 144 optimizer steps, shorter than the warm-up
    module._trainer = SimpleNamespace(estimated_stepping_batches=144, train_dataloader=object(), num_training_batches=12,
                                      accumulate_grad_batches=1, world_size=8, is_global_zero=True)
    per_process = cfg["data"]["batch_size"]
    with pytest.warns(UserWarning, match=rf"warm-up \(300 steps\) is longer than this run's 144 optimizer steps "
                                         rf"\(8 processes x {per_process} images = {8 * per_process} a step\)"):
        module.configure_optimizers()
