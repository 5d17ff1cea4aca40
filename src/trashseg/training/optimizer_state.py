"""Optimizer state saved before a model's unused modules were dropped (trashseg.models.unused),
re-indexed onto the parameters the model has now: such a run resumes where it stopped.

torch numbers a saved optimizer's parameters by position, group after group. The same optimizer
config built on the model as it was built then (the dropped modules' parameters on the meta device)
gives each old position its parameter name; the one built now gives the new positions. The dropped
parameters never had a gradient, so they hold no state to lose.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from trashseg.models.unused import dropped_names, parameters_as_built

from .optim import build_optimizer


class _Listed(nn.Module):
    """Stands for a model in `build_optimizer`, which reads only its named parameters."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        super().__init__()
        self.listed = named

    def named_parameters(self, *args, **kwargs):
        return iter(self.listed)


def _groups(named: list[tuple[str, nn.Parameter]], optimizer_cfg: Mapping) -> list[tuple[str, list[str]]]:
    """(group name, its parameter names in order) of the optimizer the config builds on `named`."""
    name_of = {id(p): n for n, p in named}
    optimizer = build_optimizer(_Listed(named), optimizer_cfg)
    return [(g["name"], [name_of[id(p)] for p in g["params"]]) for g in optimizer.param_groups]


def _reindexed(saved: dict, old: list[tuple[str, list[str]]], new: list[tuple[str, list[str]]]) -> dict | None:
    """`saved` (an optimizer state_dict) with its positions moved from the `old` groups to the `new`;
    None when `saved` was not written by the `old` groups (then torch reports the mismatch itself)."""
    saved_groups = saved["param_groups"]
    if [g.get("name") for g in saved_groups] != [n for n, _ in old] or any(
            len(g["params"]) != len(names) for g, (_, names) in zip(saved_groups, old)):
        return None
    position = {name: index for g, (_, names) in zip(saved_groups, old) for name, index in zip(names, g["params"])}
    by_name = {g["name"]: g for g in saved_groups}
    if any(n not in by_name for n, _ in new):
        return None
    groups, state, index = [], {}, 0
    for group_name, names in new:
        groups.append({**by_name[group_name], "params": list(range(index, index + len(names)))})
        for name in names:
            if position[name] in saved["state"]:
                state[index] = saved["state"][position[name]]
            index += 1
    return {"state": state, "param_groups": groups}


def reindex_for_dropped_modules(checkpoint: dict, model: nn.Module, optimizer_cfg: Mapping, prefix: str = "model.") -> None:
    """In place: a Lightning checkpoint whose state_dict still holds tensors of modules `model` has
    dropped gets its optimizer state re-indexed (a checkpoint written since is left as it is)."""
    dropped = tuple(f"{prefix}{name}." for name in dropped_names(model))
    if not dropped or not checkpoint.get("optimizer_states"):
        return
    if not any(key.startswith(dropped) for key in checkpoint.get("state_dict", {})):
        return
    old = _groups(parameters_as_built(model), optimizer_cfg)
    new = _groups(list(model.named_parameters()), optimizer_cfg)
    reindexed = _reindexed(checkpoint["optimizer_states"][0], old, new)
    if reindexed is not None:
        checkpoint["optimizer_states"][0] = reindexed
