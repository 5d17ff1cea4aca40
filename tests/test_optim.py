"""Parameter groups (coverage, leftovers, errors), schedulers that keep lr ratios, losses."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from trashseg.training.losses import WeightedLoss
from trashseg.training.optimization.optimizer import build_optimizer
from trashseg.training.optimization.schedules import build_scheduler
from trashseg.training.optimization.optimizer import build_param_groups, groups_table

LOSSES = Path(__file__).resolve().parents[1] / "configs" / "loss"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.decoder = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 3, 1)
        self.extra = nn.Parameter(torch.zeros(2))


def names_of(groups, model):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: sorted(lookup[id(p)] for p in g["params"]) for g in groups}


def test_every_parameter_in_exactly_one_group_with_default_for_leftovers():
    model = Tiny()
    groups = build_param_groups(model, 0.1, 1e-4, [{"name": "enc", "select": "encoder", "lr_mult": 0.1},
                                                   {"name": "head", "select": ["head"], "lr": 0.5}])
    named = names_of(groups, model)
    assert named["enc"] == ["encoder.0.bias", "encoder.0.weight", "encoder.1.bias", "encoder.1.weight"]
    assert named["default"] == ["decoder.bias", "decoder.weight", "extra"]
    all_names = sorted(n for ns in named.values() for n in ns)
    assert all_names == sorted(n for n, _ in model.named_parameters())
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"enc": pytest.approx(0.01), "head": 0.5, "default": 0.1}
    assert "enc" in groups_table(groups)


def test_no_decay_for_norms_and_biases():
    model = Tiny()
    groups = build_param_groups(model, 0.1, 1e-4, [{"name": "enc", "select": "encoder"}], no_decay_norm_bias=True)
    named, decay = names_of(groups, model), {g["name"]: g["weight_decay"] for g in groups}
    assert named["enc"] == ["encoder.0.weight"] and decay["enc"] == 1e-4
    assert named["enc/no_decay"] == ["encoder.0.bias", "encoder.1.bias", "encoder.1.weight"]
    assert decay["enc/no_decay"] == 0.0


def test_strict_leftovers_empty_and_overlapping_groups_are_errors():
    model = Tiny()
    with pytest.raises(ValueError, match=r"strict optimizer groups: 3 parameters are in no group: \['extra', 'decoder.weight', 'decoder.bias'\]"):
        build_param_groups(model, 0.1, 0, [{"name": "e", "select": "encoder"}, {"name": "h", "select": "head"}], strict=True)
    with pytest.raises(ValueError, match="'backbone' selects no trainable parameter"):
        build_param_groups(model, 0.1, 0, [{"name": "backbone", "select": "backbone"}])
    with pytest.raises(ValueError, match="selected by both groups 'a' and 'b'"):
        build_param_groups(model, 0.1, 0, [{"name": "a", "select": "encoder"}, {"name": "b", "select": "encoder.0"}])
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="'h' selects no trainable"):  # frozen parameters are not selectable
        build_param_groups(model, 0.1, 0, [{"name": "h", "select": "head"}])


@pytest.mark.parametrize("schedule", [
    {"name": "poly", "power": 0.9, "warmup_steps": 3},
    {"name": "cosine", "min_lr_ratio": 0.01},
    {"name": "cosine_restarts", "cycles": 2, "warmup_epochs": 1},
    {"name": "step", "step_size_epochs": 2, "gamma": 0.5},
    {"name": "multistep", "milestones_epochs": [1, 3], "gamma": 0.1},
])
def test_schedulers_keep_the_ratio_between_groups(schedule):
    model = Tiny()
    optimizer = build_optimizer(model, {"name": "SGD", "lr": 0.1, "groups": [{"name": "enc", "select": "encoder", "lr_mult": 0.1}],
                                        "params": {"momentum": 0.9}})
    scheduler = build_scheduler(optimizer, schedule, total_steps=20, steps_per_epoch=4)
    seen = set()
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["enc"] == pytest.approx(0.1 * lrs["default"], rel=1e-9)
        seen.add(round(lrs["default"], 12))
    assert len(seen) > 1  # the schedule did change the lr


def test_warmup_is_linear():
    optimizer = build_optimizer(Tiny(), {"name": "AdamW", "lr": 1.0})
    scheduler = build_scheduler(optimizer, {"name": "constant", "warmup_steps": 4}, 10, 5)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_unknown_optimizer_scheduler_and_keys():
    with pytest.raises(ValueError, match="unknown optimizer 'Adamw'"):
        build_optimizer(Tiny(), {"name": "Adamw", "lr": 1e-3})
    with pytest.raises(ValueError, match=r"unknown optimizer keys \['momentum'\]; put SGD's own arguments under optimizer.params"):
        build_optimizer(Tiny(), {"name": "SGD", "lr": 1e-3, "momentum": 0.9})
    optimizer = build_optimizer(Tiny(), {"name": "SGD", "lr": 1e-3})
    with pytest.raises(ValueError, match="unknown scheduler 'cosin'"):
        build_scheduler(optimizer, {"name": "cosin"}, 10, 2)


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "lovasz", "jaccard"])
def test_losses_ignore_255(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 4, (2, 8, 8), dtype=torch.uint8)
    loss = WeightedLoss([{"name": name}])
    ignored = target.clone()
    ignored[:, :4] = 255
    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 4, 4, 8) * 10  # only on ignored pixels
    assert loss(logits.detach(), ignored).item() == pytest.approx(loss(changed, ignored).item(), rel=1e-5)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0


def test_weighted_sum_of_terms():
    logits, target = torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4))
    ce, dice = WeightedLoss([{"name": "ce"}])(logits, target), WeightedLoss([{"name": "dice"}])(logits, target)
    both = WeightedLoss([{"name": "ce", "weight": 2.0}, {"name": "dice", "weight": 0.5}])(logits, target)
    assert both.item() == pytest.approx(2 * ce.item() + 0.5 * dice.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "lovasz", "jaccard"])
def test_a_batch_of_only_ignored_pixels_gives_zero_loss(name):
    """Crowd or padding only: no NaN (which would stop training), no empty tensor, no error."""
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = WeightedLoss([{"name": name}])(logits, torch.full((2, 8, 8), 255, dtype=torch.uint8))
    value.backward()
    assert value.shape == () and value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_class_weights_follow_the_class_order_and_count():
    # one pixel of class 0 and two of class 1; with equal logits every pixel costs ln 2, so any weighting gives ln 2
    logits = torch.zeros(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 1]]])
    weighted = WeightedLoss([{"name": "ce", "params": {"class_weights": [1.0, 3.0]}}], num_classes=2)
    assert weighted(logits, target).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    logits[0, 1, 0, 1:] = 2.0  # class 1 now right with p = sigmoid(2) on its pixels, class 0 wrong on its pixel
    p1 = torch.sigmoid(torch.tensor(2.0))
    expected = (1.0 * -torch.log(1 - torch.tensor(0.5)) + 3.0 * 2 * -torch.log(p1)) / (1.0 + 3.0 * 2)
    assert weighted(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="class_weights has 3 values but data.classes has 2"):
        WeightedLoss([{"name": "ce", "params": {"class_weights": [1.0, 2.0, 3.0]}}], num_classes=2)


@pytest.mark.parametrize("name", sorted(p.stem for p in LOSSES.glob("*.yaml")))
def test_every_loss_config_builds_for_the_11_classes(name):
    cfg = yaml.safe_load((LOSSES / f"{name}.yaml").read_text())
    loss = WeightedLoss(cfg["terms"], num_classes=11)
    logits, target = torch.randn(2, 11, 8, 8), torch.randint(0, 11, (2, 8, 8))
    assert torch.isfinite(loss(logits, target))
