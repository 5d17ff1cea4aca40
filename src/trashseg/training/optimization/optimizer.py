"""The optimizer by name from torch.optim, over parameter groups that can never silently drop a
parameter, with layer-wise learning-rate decay.

Groups: a group selects parameters by submodule or name prefix (`encoder`, `decoder.aspp`, `head`)
and sets `lr` or `lr_mult` and `weight_decay`. Every trainable parameter lands in exactly one
group: what no group selects goes to `default` at the base lr (or is an error with
`strict: true`), a parameter two groups select is an error, and so is a group that selects
nothing. With `no_decay_norm_bias`, norms and biases (1-D tensors), position embeddings and
relative-position tables of each group go to a `<group>/no_decay` twin with weight decay 0.
With `layer_decay`, the encoder's stages make groups of their own first.

Layer decay (`optimizer.layer_decay: d`): the encoder's stem and each of its stages get an optimizer
group of their own, `encoder.stem`, `encoder.stage1` ... `encoder.stageK`, at lr x d^(depth from
the top): the top stage d^1, the one below d^2, ..., the stem d^(K+1); the decoder and head keep
the full lr (depth 0), as BEiT / ConvNeXt fine-tuning does it. A stage holds its own downsampling
(Swin's patch merging, ConvNeXt's downsample, MiT's patch embedding); the stem is what embeds the
image (ResNet's conv1/bn1, ConvNeXt's stem, Swin's and MiT's first patch embedding, EfficientNet's
conv_stem/bn1). Known encoders: smp's ResNet and MiT (`mit_b*`) and timm's (`tu-`) ResNet,
ConvNeXt, Swin and EfficientNet(-Lite). EfficientNet's seven block groups fall into the five stages
its feature info names by stride (2, 4, 8, 16, 32): groups 0 | 1 | 2 | 3-4 | 5-6. A parameter no
rule places is an error, never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn


# timm EfficientNet block group -> stage (the reduction its feature info names: 2, 4, 8, 16, 32).
EFFICIENTNET_STAGES = (1, 2, 3, 4, 4, 5, 5)

# (pattern on the encoder-relative name, how the stage number is read): "stem", the offset added to
# the captured index (timm's stages count from 0, ResNet's layers and MiT's blocks from 1), or a
# table indexed by it.
STAGE_RULES = (
    (re.compile(r"(conv1|bn1|conv_stem|stem|stem[._]\d+|patch_embed|patch_embed1)\."), "stem"),  # before MiT's rule
    (re.compile(r"blocks\.(\d+)\.\d+\."), EFFICIENTNET_STAGES),  # EfficientNet blocks.<group>.<block>
    (re.compile(r"layer(\d)\."), 0),                      # ResNet layer1..4 (smp and timm)
    (re.compile(r"(?:stages|layers)[._](\d+)\."), 1),    # timm ConvNeXt stages_0..3, Swin layers_0..3
    (re.compile(r"(?:block|norm|patch_embed)(\d)\."), 0),  # MiT block1..4, norm1..4, patch_embed2..4
)
WRAPPER = "model."  # smp's TimmUniversalEncoder keeps the timm model under `model`


def stage_of(name: str) -> int | None:
    """0 for the stem, k for stage k of an encoder-relative parameter name; None if no rule knows it."""
    name = name.removeprefix(WRAPPER)
    for pattern, offset in STAGE_RULES:
        found = pattern.match(name)
        if not found:
            continue
        if offset == "stem":
            return 0
        index = int(found.group(1))
        if isinstance(offset, tuple):
            return offset[index] if index < len(offset) else None
        return index + offset
    return None


def layer_decay_groups(names: Iterable[str], decay: float) -> list[dict]:
    """Optimizer group specs `{name, select, lr_mult}` for the `encoder.*` names among `names`
    (a model's trainable parameter names), bottom to top."""
    if not 0 < decay <= 1:
        raise ValueError(f"optimizer.layer_decay = {decay}: give a factor in (0, 1] (0.9 is usual; 1 decays nothing)")
    stages: dict[int, list[str]] = {}
    for name in names:
        if not name.startswith("encoder."):
            continue
        stage = stage_of(name.removeprefix("encoder."))
        if stage is None:
            raise ValueError(f"optimizer.layer_decay cannot place {name} in a stage of the encoder; it knows ResNet, "
                             "ConvNeXt, Swin, MiT and EfficientNet encoders (smp's and tu-); remove layer_decay for this model")
        stages.setdefault(stage, []).append(name)
    if not stages:
        raise ValueError("optimizer.layer_decay: the model has no trainable encoder parameters to decay")
    top = max(stages)
    return [{"name": "encoder.stem" if stage == 0 else f"encoder.stage{stage}", "select": stages[stage],
             "lr_mult": decay ** (top + 1 - stage)} for stage in sorted(stages)]


GROUP_KEYS = {"name", "select", "lr", "lr_mult", "weight_decay"}
# Parameters that are not 1-D and still get no weight decay (Swin, ViT; timm's no_weight_decay() names).
NO_DECAY_NAMES = ("pos_embed", "relative_position_bias_table", "cls_token", "dist_token", "mask_token")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or any(key in name.rsplit(".", 1)[-1] for key in NO_DECAY_NAMES)


def _selects(prefixes: Sequence[str], name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def build_param_groups(
    model: nn.Module, lr: float, weight_decay: float, groups: Sequence[Mapping] = (),
    no_decay_norm_bias: bool = False, strict: bool = False, layer_decay: float | None = None,
) -> list[dict]:
    """torch.optim param groups, each with a `name`, its own `lr` and `weight_decay`."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    owner: dict[str, str] = {}
    specs = []
    if layer_decay is not None:
        for group in groups:
            select = [group.get("select")] if isinstance(group.get("select"), str) else list(group.get("select") or [])
            if any(s == "encoder" or s.startswith("encoder.") for s in select):
                raise ValueError(f"optimizer group {group.get('name')!r} selects encoder parameters, and "
                                 "optimizer.layer_decay gives the encoder's stages their groups itself; remove one of them")
        groups = layer_decay_groups([n for n, _ in trainable], layer_decay) + list(groups)
    for group in groups:
        unknown = set(group) - GROUP_KEYS
        if unknown or "name" not in group or "select" not in group:
            raise ValueError(f"optimizer group {dict(group)}: needs name and select; unknown keys {sorted(unknown)}")
        if "lr" in group and "lr_mult" in group:
            raise ValueError(f"optimizer group {group['name']!r}: give lr or lr_mult, not both")
        select = [group["select"]] if isinstance(group["select"], str) else list(group["select"])
        names = [n for n, _ in trainable if _selects(select, n)]
        if not names:
            raise ValueError(f"optimizer group {group['name']!r} selects no trainable parameter (select: {select}); "
                             f"top-level modules are {sorted({n.split('.')[0] for n, _ in trainable})}")
        for n in names:
            if n in owner:
                raise ValueError(f"parameter {n} is selected by both groups {owner[n]!r} and {group['name']!r}")
            owner[n] = group["name"]
        group_lr = group.get("lr", lr * group.get("lr_mult", 1.0))
        specs.append((group["name"], group_lr, group.get("weight_decay", weight_decay)))
    leftovers = [n for n, _ in trainable if n not in owner]
    if leftovers and strict:
        raise ValueError(f"strict optimizer groups: {len(leftovers)} parameters are in no group: {leftovers[:10]}")
    if leftovers:
        specs.append(("default", lr, weight_decay))
        owner |= {n: "default" for n in leftovers}

    out = []
    for name, group_lr, group_wd in specs:
        params = [(n, p) for n, p in trainable if owner[n] == name]
        decay = [p for n, p in params if not (no_decay_norm_bias and _no_decay(n, p))]
        no_decay = [p for n, p in params if no_decay_norm_bias and _no_decay(n, p)]
        for suffix, members, wd in (("", decay, group_wd), ("/no_decay", no_decay, 0.0)):
            if members:
                out.append({"name": name + suffix, "params": members, "lr": group_lr, "weight_decay": wd})
    return out


def groups_table(groups: Sequence[Mapping]) -> str:
    """The table printed when training starts."""
    rows = [{"group": g["name"], "parameters": sum(p.numel() for p in g["params"]), "tensors": len(g["params"]),
             "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups]
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")


def build_optimizer(model: nn.Module, cfg: Mapping) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name")
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"unknown optimizer {name!r}; use a torch.optim class name such as SGD, Adam, AdamW")
    groups = build_param_groups(
        model, cfg.pop("lr"), cfg.pop("weight_decay", 0.0), cfg.pop("groups", None) or [],
        cfg.pop("no_decay_norm_bias", False), cfg.pop("strict", False), cfg.pop("layer_decay", None),
    )
    extra = cfg.pop("params", None) or {}
    if cfg:
        raise ValueError(f"unknown optimizer keys {sorted(cfg)}; put {name}'s own arguments under optimizer.params")
    return cls(groups, **extra)
