"""Submodules whose parameters never reach a network's output: found once, by a probe, when a new
run's config is resolved; recorded there (`model.dropped`); left out of every build of that run.

Library encoders keep layers their segmentation forward skips or throws away: smp's EfficientNet
encoders keep the classifier's last convolution and norm (`_conv_head`, `_bn1`; `conv_head`, `bn2`
for the `timm-efficientnet` ones), every smp encoder built with `encoder_depth` < 5 keeps the stages
past that depth, and timm's EfficientNet features run those stages and discard their output. Such
parameters never get a gradient, which DDP with `find_unused_parameters=False` refuses at the second
step (and which the optimizer state and the checkpoints carry for nothing).

`drop_unreached` is the probe: one forward on a tiny input and a walk of its autograd graph find
them, whatever the encoder; each becomes a pass-through `Dropped` placeholder, and the forward's
output is checked to be bitwise the same without them. `drop_recorded` applies a recorded list to a
fresh build: no forward, no autograd, so it works under `torch.inference_mode()`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger("trashseg.models")


class Dropped(nn.Identity):
    """Stands where an unreached submodule was: no parameters, the same slot (a ModuleList's indices
    keep their meaning), its input passed through (a forward that ran the module threw its output away)."""

    def __init__(self, name: str):
        super().__init__()
        self.dropped_name = name

    def extra_repr(self) -> str:
        return f"{self.dropped_name}: its output did not reach the model's, dropped"


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _reached_parameters(outputs: list[torch.Tensor]) -> set[int]:
    """ids of the leaf tensors (parameters) the autograd graph behind `outputs` accumulates into.
    Walking the graph finds them without computing a gradient: a backward would cost three times
    the forward on Swin-L."""
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen, reached = set(), set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: the parameter it feeds
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return reached


def _check_autograd(module: nn.Module) -> None:
    """The probe records an autograd graph: parameters made under `torch.inference_mode()` cannot
    be part of one."""
    if any(p.is_inference() for p in module.parameters()):
        raise RuntimeError("the unreached-module probe needs a model built outside torch.inference_mode() (its "
                           "parameters are inference tensors); build it for the probe without inference_mode")


def unreached_parameters(module: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the trainable parameters of `module` that `module(example)` does not use, run in eval
    mode (running statistics stay as they are, no random numbers are drawn)."""
    _check_autograd(module)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            reached = _reached_parameters([t for t in _tensors(module(example)) if t.requires_grad])
    finally:
        module.train(was_training)
    return {n for n, p in module.named_parameters() if p.requires_grad and id(p) not in reached}


def _outputs(module: nn.Module, example: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return _tensors(module(example))


def _replace(module: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, attr = name.rpartition(".")
    parent = module.get_submodule(parent_name)
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def drop_unreached(module: nn.Module, example: torch.Tensor) -> list[str]:
    """The probe. Replace each largest submodule whose parameters all go unused (see
    `unreached_parameters`) by a `Dropped` pass-through, keeping any whose output mattered all the
    same (used without a gradient, e.g. through an argmax: the output changes without it); returns
    the names replaced, in `named_modules` order."""
    unused = unreached_parameters(module, example)
    if not unused:
        return []
    candidates: list[str] = []
    for name, child in module.named_modules():
        if not name or any(name.startswith(c + ".") for c in candidates):
            continue
        own = [f"{name}.{n}" for n, p in child.named_parameters() if p.requires_grad]
        if own and all(n in unused for n in own):
            candidates.append(name)
    was_training = module.training
    module.eval()
    try:
        reference = _outputs(module, example)

        def same() -> bool:
            try:
                outputs = _outputs(module, example)
            except RuntimeError:  # a kept module got the pass-through's input in the wrong shape
                return False
            return len(outputs) == len(reference) and all(torch.equal(a, b) for a, b in zip(outputs, reference))

        originals = {name: _replace(module, name, Dropped(name)) for name in candidates}
        if not same():  # rare: find the ones that mattered, one at a time
            for name in candidates:
                _replace(module, name, originals[name])
            for name in candidates:
                _replace(module, name, Dropped(name))
                if not same():
                    _replace(module, name, originals.pop(name))
            log.warning("kept modules whose parameters get no gradient but whose output matters: %s",
                        ", ".join(n for n in candidates if n not in originals))
    finally:
        module.train(was_training)
    return [n for n in candidates if n in originals]


def drop_recorded(model: nn.Module, names: Iterable[str], what: str = "the model") -> None:
    """Replace each named submodule (a recorded `model.dropped`) by a `Dropped` pass-through; a name
    that is no submodule stops with one line (the record belongs to another model)."""
    for name in names:
        try:
            if not name:
                raise AttributeError
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model.dropped names {name!r}, which {what} has no submodule of: the run config's record "
                             "was made for another model; remove model.dropped from a config you edited by hand, "
                             "or use the config the run wrote") from None
        _replace(model, name, Dropped(name))
