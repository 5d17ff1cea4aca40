"""Layer-wise lr decay (optimizer.layer_decay): the group of every encoder parameter and the lr of
every group, checked by hand for tiny Swin, ConvNeXt, ResNet and MiT encoders; coverage, no-decay
twins and one-line errors."""

import pytest
import torch

from trashseg.models import build_model
from trashseg.training.optimization.optimizer import stage_of
from trashseg.training.optimization.optimizer import build_optimizer
from trashseg.training.optimization.optimizer import build_param_groups, groups_table

TINY = {  # the real encoder classes, one block per stage and narrow: built in well under a second
    "swin": {"name": "smp", "arch": "UPerNet", "encoder_name": "tu-swin_tiny_patch4_window7_224",
             "decoder": {"decoder_channels": 16},
             "encoder_params": {"img_size": 64, "dynamic_img_size": True, "depths": [1, 1, 1, 1], "embed_dim": 8,
                                "num_heads": [1, 1, 1, 1]}},
    "convnext": {"name": "smp", "arch": "UPerNet", "encoder_name": "tu-convnext_tiny", "decoder": {"decoder_channels": 16},
                 "encoder_params": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}},
    "resnet": {"name": "smp", "arch": "Unet", "encoder_name": "resnet18", "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}},
    "tu-resnet": {"name": "smp", "arch": "Unet", "encoder_name": "tu-resnet18", "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}},
    "mit": {"name": "smp", "arch": "Segformer", "encoder_name": "mit_b0", "decoder": {"decoder_segmentation_channels": 16}},
}

# decay 0.5, lr 1: the top stage (4) 0.5, then 0.25, 0.125, 0.0625, the stem 0.5^5; decoder and head 1
EXPECTED_LR = {"encoder.stem": 0.03125, "encoder.stage1": 0.0625, "encoder.stage2": 0.125, "encoder.stage3": 0.25,
               "encoder.stage4": 0.5, "default": 1.0}

# parameter -> its group, by hand from each encoder's structure
PLACED = {
    "swin": {"encoder.model.patch_embed.proj.weight": "encoder.stem",
             "encoder.model.layers_0.blocks.0.attn.qkv.weight": "encoder.stage1",
             "encoder.model.layers_1.downsample.reduction.weight": "encoder.stage2",  # patch merging opens stage 2
             "encoder.model.layers_3.blocks.0.mlp.fc2.weight": "encoder.stage4",
             "encoder.model.layers_2.blocks.0.attn.relative_position_bias_table": "encoder.stage3/no_decay",
             "encoder.model.layers_2.blocks.0.norm1.weight": "encoder.stage3/no_decay",
             "decoder.fusion_block.0.weight": "default", "head.0.weight": "default"},
    "convnext": {"encoder.model.stem_0.weight": "encoder.stem", "encoder.model.stem_1.weight": "encoder.stem/no_decay",
                 "encoder.model.stages_0.blocks.0.conv_dw.weight": "encoder.stage1",
                 "encoder.model.stages_1.downsample.1.weight": "encoder.stage2",
                 "encoder.model.stages_3.blocks.0.gamma": "encoder.stage4/no_decay",  # layer scale: 1-D
                 "decoder.fusion_block.0.weight": "default"},
    "resnet": {"encoder.conv1.weight": "encoder.stem", "encoder.bn1.weight": "encoder.stem/no_decay",
               "encoder.layer1.0.conv1.weight": "encoder.stage1", "encoder.layer2.0.downsample.0.weight": "encoder.stage2",
               "encoder.layer4.1.conv2.weight": "encoder.stage4", "decoder.blocks.0.conv1.0.weight": "default",
               "head.0.bias": "default/no_decay"},
    "tu-resnet": {"encoder.model.conv1.weight": "encoder.stem", "encoder.model.layer3.1.conv2.weight": "encoder.stage3"},
    "mit": {"encoder.patch_embed1.proj.weight": "encoder.stem", "encoder.block1.0.attn.q.weight": "encoder.stage1",
            "encoder.norm1.weight": "encoder.stage1/no_decay", "encoder.patch_embed2.proj.weight": "encoder.stage2",
            "encoder.block4.1.mlp.fc1.weight": "encoder.stage4", "decoder.mlp_stage.0.linear.weight": "default"},
}


def names_of(groups, model):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return {lookup[id(p)]: g["name"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("encoder", list(TINY))
def test_each_stage_is_a_group_at_lr_times_decay_to_its_depth(encoder):
    torch.manual_seed(0)
    model = build_model(TINY[encoder], 3)
    groups = build_optimizer(model, {"name": "AdamW", "lr": 1.0, "weight_decay": 0.05, "no_decay_norm_bias": True,
                                     "layer_decay": 0.5}).param_groups
    lrs = {g["name"].removesuffix("/no_decay"): g["lr"] for g in groups}
    assert lrs == pytest.approx(EXPECTED_LR)
    assert all(g["weight_decay"] == (0.0 if g["name"].endswith("/no_decay") else 0.05) for g in groups)
    group_of = names_of(groups, model)
    # coverage: every parameter exactly once
    assert sorted(group_of) == sorted(n for n, _ in model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, group in PLACED[encoder].items():
        assert group_of[name] == group, name
    # only the decoder and head are left for the full lr
    assert {n.split(".")[0] for n, g in group_of.items() if g.startswith("default")} == {"decoder", "head"}
    table = groups_table(groups)
    assert "encoder.stage2" in table and "0.125" in table and "0.03125" in table


def test_stage_rules_by_name():
    assert [stage_of(n) for n in ("conv1.weight", "layer3.0.bn1.bias", "model.stages_0.blocks.0.gamma",
                                  "model.layers_3.downsample.norm.weight", "patch_embed1.proj.weight",
                                  "patch_embed4.norm.bias", "norm2.weight", "model.stem_1.bias")] == [0, 3, 1, 4, 0, 4, 2, 0]
    # timm EfficientNet: conv_stem/bn1 the stem, block groups 0 | 1 | 2 | 3-4 | 5-6 the stages of stride 2 ... 32
    assert [stage_of(n) for n in ("model.conv_stem.weight", "model.bn1.bias", "model.blocks.0.0.conv_dw.weight",
                                  "model.blocks.2.1.bn3.weight", "model.blocks.3.0.conv_pw.weight",
                                  "model.blocks.4.2.conv_pwl.weight", "model.blocks.6.0.bn2.bias")] == [0, 0, 1, 3, 4, 4, 5]
    assert stage_of("model.blocks.7.0.conv_pw.weight") is None  # no eighth group: unknown, never guessed
    assert stage_of("_blocks.3._expand_conv.weight") is None  # smp's own efficientnet-b*: not placed


def test_efficientnet_lite_five_stages_from_its_feature_info():
    """tu-tf_efficientnet_lite0: the stages are the five its feature info names (strides 2 ... 32), so
    with decay 0.5 the top stage gets 0.5, the stem 0.5^6; every parameter placed once."""
    model = build_model({"name": "smp", "arch": "Unet", "encoder_name": "tu-tf_efficientnet_lite0",
                         "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}}, 3)
    reductions = [info["reduction"] for info in model.encoder.model.feature_info.get_dicts()]
    assert reductions == [2, 4, 8, 16, 32]
    groups = build_optimizer(model, {"name": "AdamW", "lr": 1.0, "weight_decay": 0.05, "no_decay_norm_bias": True,
                                     "layer_decay": 0.5}).param_groups
    lrs = {g["name"].removesuffix("/no_decay"): g["lr"] for g in groups}
    assert lrs == pytest.approx({"encoder.stem": 0.5 ** 6, "encoder.stage1": 0.5 ** 5, "encoder.stage2": 0.5 ** 4,
                                 "encoder.stage3": 0.125, "encoder.stage4": 0.25, "encoder.stage5": 0.5, "default": 1.0})
    group_of = names_of(groups, model)
    assert sorted(group_of) == sorted(n for n, _ in model.named_parameters())
    # the module each stage's feature is taken from (blocks.1, blocks.4, blocks.6) is in that stage
    assert group_of["encoder.model.blocks.1.1.conv_pwl.weight"] == "encoder.stage2"
    assert group_of["encoder.model.blocks.3.0.conv_dw.weight"] == "encoder.stage4"  # stride 16, with blocks.4
    assert group_of["encoder.model.blocks.6.0.conv_pw.weight"] == "encoder.stage5"
    assert group_of["encoder.model.blocks.0.0.bn1.weight"] == "encoder.stage1/no_decay"
    assert group_of["encoder.model.conv_stem.weight"] == "encoder.stem"


def test_layer_decay_with_user_groups_for_decoder_and_head():
    """Segformer's recipe: the head at 10x the lr beside the decayed encoder; the decoder at the lr."""
    model = build_model(TINY["mit"], 3)
    groups = build_param_groups(model, 1e-3, 0.01, [{"name": "head", "select": "head", "lr_mult": 10}], layer_decay=0.9,
                                strict=False)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == pytest.approx(1e-2) and lrs["default"] == pytest.approx(1e-3)
    assert lrs["encoder.stage4"] == pytest.approx(0.9e-3) and lrs["encoder.stem"] == pytest.approx(0.9 ** 5 * 1e-3)


def test_layer_decay_errors_are_one_line():
    model = build_model(TINY["resnet"], 3)
    cases = [
        (dict(groups=[{"name": "enc", "select": "encoder.layer4"}], layer_decay=0.9),
         r"optimizer group 'enc' selects encoder parameters, and optimizer.layer_decay gives the encoder's stages"),
        (dict(layer_decay=1.5), r"optimizer.layer_decay = 1.5: give a factor in \(0, 1\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            build_param_groups(model, 0.1, 0.0, **kwargs)
        assert "\n" not in str(err.value)
    effnet = build_model({"name": "smp", "arch": "Unet", "encoder_name": "efficientnet-b0",
                          "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}}, 3)
    with pytest.raises(ValueError, match=r"cannot place encoder\.\S+ in a stage of the encoder; it knows ResNet, ConvNeXt"):
        build_param_groups(effnet, 0.1, 0.0, layer_decay=0.9)


def test_position_tables_get_no_weight_decay_without_layer_decay():
    model = build_model(TINY["swin"], 3)
    groups = build_param_groups(model, 0.1, 0.05, no_decay_norm_bias=True)
    group_of = names_of(groups, model)
    tables = [n for n in group_of if n.endswith("relative_position_bias_table")]
    assert len(tables) == 4 and all(group_of[n] == "default/no_decay" for n in tables)
    assert group_of["encoder.model.layers_0.blocks.0.attn.qkv.weight"] == "default"
