"""Layer-wise learning-rate decay (`optimizer.layer_decay: d`): the encoder's stem and each of its
stages get an optimizer group of their own, `encoder.stem`, `encoder.stage1` ... `encoder.stageK`,
at lr x d^(depth from the top): the top stage d^1, the one below d^2, ..., the stem d^(K+1); the
decoder and head keep the full lr (depth 0), as BEiT / ConvNeXt fine-tuning does it.

A stage holds its own downsampling (Swin's patch merging, ConvNeXt's downsample, MiT's patch
embedding); the stem is what embeds the image (ResNet's conv1/bn1, ConvNeXt's stem, Swin's and
MiT's first patch embedding, EfficientNet's conv_stem/bn1). Known encoders: smp's ResNet and MiT
(`mit_b*`) and timm's (`tu-`) ResNet, ConvNeXt, Swin and EfficientNet(-Lite). EfficientNet's seven
block groups fall into the five stages its feature info names by stride (2, 4, 8, 16, 32): groups
0 | 1 | 2 | 3-4 | 5-6. A parameter no rule places is an error, never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
