"""Optimizer parameter groups that can never silently drop a parameter.

A group selects parameters by submodule or name prefix (`encoder`, `decoder.aspp`, `head`)
and sets `lr` or `lr_mult` and `weight_decay`. Every trainable parameter lands in exactly one
group: what no group selects goes to `default` at the base lr (or is an error with
`strict: true`), a parameter two groups select is an error, and so is a group that selects
nothing. With `no_decay_norm_bias`, norms and biases (1-D tensors), position embeddings and
relative-position tables of each group go to a `<group>/no_decay` twin with weight decay 0.
With `layer_decay`, the encoder's stages make groups of their own first (training.layer_decay).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from torch import nn

from .layer_decay import layer_decay_groups

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
