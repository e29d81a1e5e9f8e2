"""Group detection over every torchvision model and one timm model per family."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from conftest import changed, snapshot
from torch import nn

import freezable as fz
from freezable._models import build_model
from freezable._sweep import check_groups, model_names
from freezable.detect import detect_groups

TORCHVISION = model_names("torchvision")
TIMM_FAMILIES = model_names("timm", family_sample=True)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_get_stem_stages_head_and_backbone(name):
    model = build_model(f"torchvision/{name}")
    result = check_groups(model)  # reads the model only: the same one is frozen below
    assert result["ok_backbone_head"] and result["has_stem"] and result["stages_in_backbone"]
    assert result["n_stages"] >= 2
    assert_freezing_stem_and_stage1_leaves_the_rest_trainable(model)


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_families_get_stem_head_and_backbone(name):
    model = build_model(f"timm/{name}")
    result = check_groups(model)  # reads the model only: the same one is frozen below
    assert result["ok_backbone_head"] and result["has_stem"] and result["stages_in_backbone"]
    assert_freezing_stem_and_stage1_leaves_the_rest_trainable(model)


def assert_freezing_stem_and_stage1_leaves_the_rest_trainable(model: nn.Module) -> None:
    fb = fz.FrozenBackbone(model).unfreeze()
    prefix = [g for g in ("stem", "stage1") if g in fb.freeze_group_names]
    fb.freeze(*prefix)
    # by identity: a module shared between two places has two names for its parameters
    expected = {id(p) for g in prefix for _, p in fb.freeze_group(g).named_parameters(model)}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    head = {id(p) for _, p in fb.freeze_group("head").named_parameters(model)}
    assert frozen == expected and expected and not head & frozen
    assert fb.frozen_groups[: len(prefix)] == tuple(prefix)


def test_group_order_is_stem_stages_head_backbone():
    groups = detect_groups(build_model("timm/efficientnet_b0"))
    assert list(groups) == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head", "backbone"]


def test_flat_block_lists_split_into_four_stages():
    groups = detect_groups(build_model("timm/vit_small_patch16_224"))
    assert [groups[f"stage{i}"] for i in range(1, 5)][0] == ("blocks.0", "blocks.1", "blocks.2")
    assert "cls_token" in groups["stem"] and "pos_embed" in groups["stem"] and groups["head"] == ("head",)


def test_a_model_without_a_classifier_is_all_backbone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert detect_groups(model) == {"backbone": ("0", "1")}


def test_a_model_that_is_all_head_has_no_empty_backbone():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

    assert detect_groups(Probe()) == {"head": ("linear",)}
    fb = fz.FrozenBackbone(Probe(), trainable=["head"])
    assert fb.freeze_group_names == ("head",) and all(p.requires_grad for p in fb.parameters())


def test_generic_rule_finds_a_head_and_a_stem():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 3))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 2))
    assert detect_groups(model) == {"stem": ("conv", "pool", "flat"), "head": ("fc",),
                                    "backbone": ("conv", "pool", "flat")}


REAL = {
    "torchvision/resnet18": (64, lambda: torchvision.models.resnet18(num_classes=3)),
    "torchvision/mobilenet_v3_small": (64, lambda: torchvision.models.mobilenet_v3_small(num_classes=3)),
    "torchvision/squeezenet1_1": (64, lambda: torchvision.models.squeezenet1_1(num_classes=3)),
    "timm/resnet18": (64, lambda: timm.create_model("resnet18", num_classes=3)),
    "timm/vit_tiny_patch16_224": (32, lambda: timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32,
                                                                depth=4)),
    "timm/convnext_atto": (64, lambda: timm.create_model("convnext_atto", num_classes=3)),
    "timm/efficientnet_b0": (64, lambda: timm.create_model("efficientnet_b0", num_classes=3)),
    "timm/mobilenetv3_small_050": (64, lambda: timm.create_model("mobilenetv3_small_050", num_classes=3)),
    "timm/hrnet_w18_small": (64, lambda: timm.create_model("hrnet_w18_small", num_classes=3)),
}


@pytest.mark.parametrize("name", REAL)
def test_stages_run_in_forward_order(name):
    size, make = REAL[name]
    torch.manual_seed(0)
    model = make().eval()
    groups = {k: v for k, v in detect_groups(model).items() if k != "backbone"}
    first_call: dict[str, int] = {}
    handles = []
    for group, names in groups.items():
        for member in names:
            if member in dict(model.named_modules()):
                def hook(module, args, group=group):
                    first_call.setdefault(group, len(first_call))
                handles.append(model.get_submodule(member).register_forward_pre_hook(hook))
    model(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    ran = sorted(first_call, key=first_call.get)
    assert ran == [g for g in groups if g in first_call] and ran[0] == "stem" and ran[-1] == "head"


@pytest.mark.parametrize("name", REAL)
def test_freezing_stem_and_stage1_trains_exactly_the_rest(name):
    size, make = REAL[name]
    torch.manual_seed(0)
    model = make()
    source = name.split("/")[0]
    fb = fz.FrozenBackbone(model, preset=f"{source}.frozen_stages_1")
    frozen = {n for g in ("stem", "stage1") for n, _ in fb.freeze_group(g).named_parameters(model)}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    before = snapshot(model)
    opt = torch.optim.SGD(fb.trainable_parameters(), lr=1e3)  # large enough that every nonzero grad moves its weight
    fb.train()(torch.randn(2, 3, size, size)).square().mean().backward()
    opt.step()
    moved = {n for n in changed(before, model) if n in dict(model.named_parameters())}
    assert moved and not moved & frozen
    assert moved == {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None
                     and p.grad.abs().sum() > 0}
