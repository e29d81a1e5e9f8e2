"""Group detection: every torchvision model and one timm model per family, each group against an oracle.

Oracles are read off the models themselves, not off detection: the classifier attribute, a detector's
``backbone``/``rpn``/``roi_heads`` attributes and predictors, timm's ``get_classifier()`` and the layer ids of
``timm.optim.param_groups_layer_decay``, torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor``.
The ones ``python tools/sweep.py`` uses too live in ``tools/oracles/``.
Every model is built once, on the meta device (RegNet: weights on meta, computed on the CPU).
"""

from __future__ import annotations

import functools
import math

import pytest
import timm
import timm.optim
import torch
import torchvision
from conftest import changed, snapshot
from torch import nn

import freezable as fz
from freezable._models import build_model
from freezable.detect import detect_groups
from freezable.groups import resolve_group
from tools.oracles.classifiers import (
    classifier_parameters,
    features_only_problems,
    stage_problems,
    trainable_layers_problems,
)
from tools.oracles.groups import attr_ids, ids, staged
from tools.oracles.order import FORWARD_SAMPLE, forward_order_problems

TORCHVISION = torchvision.models.list_models()
DETECTION = set(torchvision.models.list_models(module=torchvision.models.detection))
SEGMENTATION = set(torchvision.models.list_models(module=torchvision.models.segmentation))
FLOW = set(torchvision.models.list_models(module=torchvision.models.optical_flow))


@functools.cache
def timm_families() -> list[str]:
    """One timm model per family: the first by name of each module timm registers models from (no model built)."""
    return sorted(min(names) for names in (timm.list_models(module=m) for m in timm.list_modules()) if names)


@functools.lru_cache(maxsize=None)
def built(name: str, features_only: bool = False) -> tuple[nn.Module, dict[str, tuple[str, ...]]]:
    model = build_model(name, features_only=features_only)
    return model, detect_groups(model)


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_model_gets_right_groups(name):
    model, groups = built(name)
    if name in FLOW:  # RAFT: its own parts by name, no stem, stages or head
        assert groups == {n: (n,) for n in ("feature_encoder", "context_encoder", "update_block")}
        return
    assert stage_problems(model, groups) == []
    if name in DETECTION:
        predictors = [f"roi_heads.{n}" for n in ("box_predictor", "mask_predictor", "keypoint_predictor")
                      if getattr(getattr(model, "roi_heads", None), n, None) is not None]
        assert ids(model, groups, "head") == attr_ids(model, *(predictors or ["head"]))
        assert ids(model, groups, "backbone") == attr_ids(model, "backbone")
        neck = "backbone.fpn" if hasattr(model.backbone, "fpn") else "backbone.extra"
        assert attr_ids(model, neck) <= ids(model, groups, "neck")
        for part in ("rpn", "roi_heads"):
            assert ids(model, groups, part) == (attr_ids(model, part) if hasattr(model, part) else set())
        assert len(staged(groups, "stage")) >= 3  # SSDlite's too: its MobileNet's, across its two containers
    elif name in SEGMENTATION:
        assert ids(model, groups, "head") == attr_ids(model, "classifier")
        aux = getattr(model, "aux_classifier", None)
        assert ids(model, groups, "aux_head") == (attr_ids(model, "aux_classifier") if aux is not None else set())
        assert ids(model, groups, "backbone") == attr_ids(model, "backbone")
        assert len(staged(groups, "stage")) == 4 or len(staged(groups, "stage")) == 5
    else:  # classification, video, quantizable
        head = ids(model, groups, "head")
        assert head == classifier_parameters(model)
        assert head | ids(model, groups, "backbone") == {id(p) for p in model.parameters()}
        assert len(staged(groups, "stage")) >= 2 and "stem" in groups
    assert staged(groups, "block") or not staged(groups, "stage"), "every staged model has blocks"


def test_resnet50_blocks_are_its_16_bottlenecks_and_vit_blocks_its_layers():
    model, groups = built("resnet50")
    bottlenecks = [n for n, m in model.named_modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert [groups[g] for g in staged(groups, "block")] == [(n,) for n in bottlenecks]
    model, groups = built("vit_b_16")
    assert [groups[g] for g in staged(groups, "block")] == [(f"encoder.layers.{n}",) for n, _ in
                                                               model.encoder.layers.named_children()]


def layer_ids(model: nn.Module) -> dict[int, int]:
    """Each parameter's layer id, read off timm's own ``param_groups_layer_decay`` (lr_scale = 0.5 ** depth)."""
    groups = timm.optim.param_groups_layer_decay(model, layer_decay=0.5)
    depth = {id(p): round(-math.log2(g["lr_scale"])) for g in groups for p in g["params"]}
    top = max(depth.values())
    return {pid: top - d for pid, d in depth.items()}


@pytest.mark.parametrize("name", timm_families())
def test_timm_family_groups_against_get_classifier_and_layer_decay(name):
    model, groups = built(f"timm/{name}")
    head = ids(model, groups, "head")
    classifier = model.get_classifier()
    expected = {id(p) for m in (classifier if isinstance(classifier, tuple) else (classifier,))
                if isinstance(m, nn.Module) for p in m.parameters()}
    assert expected <= head and head | ids(model, groups, "backbone") == {id(p) for p in model.parameters()}
    assert stage_problems(model, groups) == []
    blocks = staged(groups, "block")
    if blocks:  # block i is exactly timm's layer id i
        layer = layer_ids(model)
        names = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
        shared = {pid for pid in names if names.count(pid) > 1}  # CoaT shares modules between blocks
        for i, block in enumerate(blocks, start=1):
            assert ids(model, groups, block) - shared == {pid for pid, lid in layer.items() if lid == i} - shared
        rest = {pid for pid, lid in layer.items() if lid > len(blocks)}
        assert not rest & ids(model, groups, "stem") and all(lid == len(blocks) + 1 for pid, lid in layer.items()
                                                             if pid in rest)


# features_only models with no stages (absent, never guessed): their classifiers have none either (no
# group_matcher: MetaFormer's caformer, csatv2, PiT; RDNet's gives no stage groups)
FEATURES_ABSENT = {"caformer_b36", "csatv2", "pit_b_224", "rdnet_base"}


@pytest.mark.parametrize("name", timm_families())
def test_features_only_stages_are_the_classifier_stages_or_absent(name):
    classifier, theirs = built(f"timm/{name}")
    features, ours = built(f"timm/{name}", features_only=True)
    problems = features_only_problems(features, ours, classifier, theirs)
    if problems == ["no stages"]:  # absent: then no stem or blocks either, and no head
        assert not {"stem", "head"} & set(ours) and not staged(ours, "block")
        assert name in FEATURES_ABSENT, f"{name} lost its features_only stages"
    else:
        assert problems == [] and name not in FEATURES_ABSENT


def stage_sizes(model: nn.Module, groups: dict[str, tuple[str, ...]]) -> list[int]:
    """Parameter counts of ``stem, stage1 .. stageN``."""
    return [sum(p.numel() for _, p in resolve_group(model, g, list(groups[g])).named_parameters(model))
            for g in ["stem", *staged(groups, "stage")] if g in groups]


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"global_pool": "", "num_classes": 0}])
def test_timm_headless_models_get_the_classifier_stages_and_no_head(kwargs):
    with torch.device("meta"):
        model = timm.create_model("convnext_atto", **kwargs)
    classifier, theirs = built("timm/convnext_atto")
    groups = detect_groups(model)
    assert "head" not in groups and stage_sizes(model, groups) == stage_sizes(classifier, theirs)


# -- the probes --------------------------------------------------------------------------


def test_fasterrcnn_head_is_the_box_predictor():
    model = build_model("fasterrcnn_resnet50_fpn")
    fb = fz.FrozenBackbone(model, trainable=["head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("roi_heads.box_predictor.")}
    assert {"cls_score", "bbox_pred"} == {n.split(".")[2] for n in trainable}
    assert fb.freeze_group("stem").modules == tuple(f"backbone.body.{n}" for n in ("conv1", "bn1", "relu", "maxpool"))


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "ssd300_vgg16"])
def test_segmentation_and_ssd_stems_are_the_first_layers_only(name):
    model, groups = built(name)
    stem = sum(p.numel() for _, p in resolve_group(model, "stem", list(groups["stem"])).named_parameters(model))
    assert 0 < stem < 0.01 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_video_resnets_get_stages(name):
    _, groups = built(name)
    assert [groups[f"stage{i}"] for i in range(1, 5)] == [(f"layer{i}",) for i in range(1, 5)]


class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torchvision.models.resnet18()
        self.decoder = nn.Sequential(nn.Linear(1000, 64), nn.ReLU(), nn.Linear(64, 2))


def test_a_known_backbone_inside_a_user_model_gets_its_groups_and_nothing_else_is_guessed():
    with torch.device("meta"):
        model = EncoderDecoder()
    groups = detect_groups(model)
    assert groups["stem"] == ("encoder.conv1", "encoder.bn1", "encoder.relu", "encoder.maxpool")
    assert groups["head"] == ("encoder.fc",) and groups["stage4"] == ("encoder.layer4",)
    assert not any(m.startswith("decoder") for members in groups.values() for m in members)


def test_several_known_models_inside_get_their_groups_prefixed_by_where_they_sit():
    with torch.device("meta"):
        model = nn.ModuleDict({"rgb": torchvision.models.resnet18(), "depth": torchvision.models.resnet18()})
    groups = detect_groups(model)
    assert groups["rgb.stem"][0] == "rgb.conv1" and groups["depth.head"] == ("depth.fc",)


def test_a_model_no_detector_knows_has_no_groups():
    assert detect_groups(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))) == {}


def test_an_unknown_group_names_the_groups_that_exist():
    with pytest.raises(fz.FreezableError, match="did you mean the group 'stage4'"):
        fz.FrozenBackbone(build_model("resnet18")).freeze("stage5")


# -- detection presets: torchvision's own rule is the oracle --------------------------------------


@pytest.mark.parametrize(("name", "top"), [("fasterrcnn_resnet50_fpn", 5), ("fasterrcnn_mobilenet_v3_large_fpn", 6)])
def test_trainable_backbone_layers_presets_freeze_what_torchvision_freezes(name, top):
    assert trainable_layers_problems(name, lambda: build_model(name)) == []
    model = build_model(name)
    fb = fz.FrozenBackbone(model, preset="torchvision.detection.trainable_backbone_layers_3")
    frozen_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad]
    assert frozen_norms and not any(m.training for m in fb.train().backbone.modules() if m in frozen_norms)
    if top == 5:  # the presets go to 6 (MobileNet's top); a ResNet body takes 0..5
        with pytest.raises(fz.FreezableError, match=r"N in 0\.\.5, not 6"):
            fz.FrozenBackbone(build_model(name), preset="torchvision.detection.trainable_backbone_layers_6")
        with pytest.raises(fz.FreezableError, match="fit torchvision detectors with a backbone.body"):
            fz.FrozenBackbone(build_model("resnet18"), preset="torchvision.detection.trainable_backbone_layers_3")


# -- forward order and training, on real tensors, for a sample -----------------------------------

@pytest.mark.parametrize("name", FORWARD_SAMPLE)
def test_stages_and_blocks_run_in_forward_order(name):
    size, make = FORWARD_SAMPLE[name]
    torch.manual_seed(0)
    model = make()
    groups = detect_groups(model)
    assert staged(groups, "block") and forward_order_problems(model, groups, size) == []


def test_the_oracles_catch_groups_out_of_order():
    size, make = FORWARD_SAMPLE["torchvision/resnet18"]
    model = make()
    groups = detect_groups(model)
    swapped = {**groups, "stage1": groups["stage2"], "stage2": groups["stage1"]}
    assert forward_order_problems(model, swapped, size) == [
        "groups run in the order ['stem', 'stage2', 'stage1', 'stage3', 'stage4', 'head'], "
        "not ['stem', 'stage1', 'stage2', 'stage3', 'stage4', 'head']"]
    assert stage_problems(model, swapped) == ["blocks are not stage by stage"]


@pytest.mark.parametrize("name", FORWARD_SAMPLE)
def test_freezing_stem_and_stage1_trains_exactly_the_rest(name):
    size, make = FORWARD_SAMPLE[name]
    torch.manual_seed(0)
    model = make()
    source = name.split("/")[0]
    # frozen_stages alone: with the preset's norm_eval, untrained statistics (mean 0, var 1) in a random deep net
    # can shrink some gradients below what lr=1e3 moves in float32, which this check would misread
    fb = fz.FrozenBackbone(model, preset=f"{source}.frozen_stages_1", norm_eval=False)
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
