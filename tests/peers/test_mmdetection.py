"""mmdetection's backbone freezing tests, ported to freezable.

Source: open-mmlab/mmdetection, tests/test_models/test_backbones/ (test_resnet.py, test_mobilenet_v2.py,
test_swin.py). mmdetection's backbones take ``frozen_stages=k`` (the stem and stages 1..k frozen, their
BatchNorms in eval) and ``norm_eval=True`` (every BatchNorm in eval, affine parameters still training).
freezable's nearest models are torchvision's and timm's, wrapped in ``FrozenBackbone``:
``frozen_stages=k`` -> ``preset="<source>.frozen_stages_k"`` (or ``freeze_to("stagek")``),
``norm_eval=True`` -> ``FrozenBackbone(..., norm_eval=True)``.

Deliberate differences: mmdetection's backbones have no classifier; freezable's wrapped classifiers keep a
``head`` group, which trains (the assertions cover what mmdetection's backbone holds). mmdetection builds
ResNet-50 with ``base_channels=1`` to stay small; here models are built on the meta device (no weights), and
a real ResNet-18 runs where a forward pass is needed.
"""

from __future__ import annotations

import pytest
import timm
import torch

import freezable as fz
from freezable.detect import detect_groups
from peers._peer import (
    FINAL_NORM_PENDING,
    assert_frozen,
    backbone_parameters,
    build,
    check_norm_state,
)

SOURCES = ["timm", "torchvision"]


@pytest.mark.parametrize("source", SOURCES)
def test_resnet_backbone_first_stage_frozen(source):
    """test_resnet.py::test_resnet_backbone, "Test ResNet50 with first stage frozen"."""
    fb = fz.FrozenBackbone(build(source, "resnet50"), preset=f"{source}.frozen_stages_1")
    fb.train()
    model = fb.backbone
    assert model.bn1.training is False  # mmdetection: model.norm1
    for layer in [model.conv1, model.bn1]:
        for param in layer.parameters():
            assert param.requires_grad is False
    for i in range(1, 1 + 1):
        assert_frozen(getattr(model, f"layer{i}"))
    # what mmdetection leaves trainable (its frozen_stages=1 freezes nothing else)
    assert all(p.requires_grad for i in (2, 3, 4) for p in getattr(model, f"layer{i}").parameters())


def test_resnet_backbone_first_stage_frozen_keeps_running_stats():
    """test_resnet.py::test_resnet_backbone, first stage frozen: freezable's addition, the frozen BatchNorms'
    running statistics stay bit-identical through a training forward (mmdetection's eval mode implies it).
    ``norm_eval=False``: frozen_stages alone (the preset adds norm_eval), so the later stages' BatchNorms update."""
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False), preset="timm.frozen_stages_1",
                           norm_eval=False)
    before = {n: b.clone() for n, b in fb.backbone.named_buffers() if n.startswith(("bn1", "layer1"))}
    fb.train()
    fb(torch.randn(2, 3, 32, 32))
    after = dict(fb.backbone.named_buffers())
    assert all(torch.equal(b, after[n]) for n, b in before.items())
    assert not torch.equal(after["layer2.0.bn1.running_mean"], torch.zeros_like(after["layer2.0.bn1.running_mean"]))


@pytest.mark.parametrize("source", ["timm"])
def test_resnetv1d_backbone_first_stage_frozen(source):
    """test_resnet.py::test_resnet_backbone, "Test ResNet50V1d with first stage frozen" (deep stem):
    timm's ``resnet50d`` has the V1d deep stem as ``conv1`` (a Sequential) + ``bn1``."""
    fb = fz.FrozenBackbone(build(source, "resnet50d"), preset=f"{source}.frozen_stages_1")
    fb.train()
    model = fb.backbone
    stem = [model.conv1, model.bn1]  # mmdetection: model.stem (9 modules)
    assert all(check_norm_state(m.modules(), False) for m in stem)
    for m in stem:
        for param in m.parameters():
            assert param.requires_grad is False
    assert_frozen(model.layer1)


@pytest.mark.parametrize("source", SOURCES)
def test_resnet_backbone_norm_eval(source):
    """test_resnet.py::test_resnet_backbone, "Test ResNet50 norm_eval=True": nothing frozen, every BN in eval."""
    fb = fz.FrozenBackbone(build(source, "resnet50"), norm_eval=True).unfreeze()
    fb.train()
    assert check_norm_state(fb.modules(), False)
    assert all(p.requires_grad for p in fb.parameters())  # norm_eval holds statistics, not parameters


def test_resnet_frozen_stages_1_with_norm_eval_detection_config():
    """mmdetection's standard detection backbone config (``frozen_stages=1, norm_eval=True``), which the README
    says the ``frozen_stages_N`` presets reproduce: after ``train()`` every BatchNorm is in eval, the later
    stages' affine parameters train, and a batch-1 training forward works (BN in eval needs no batch)."""
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False), preset="timm.frozen_stages_1")
    fb.train()
    assert check_norm_state(fb.modules(), False)
    assert fb.backbone.layer2[0].bn1.weight.requires_grad
    fb(torch.randn(1, 3, 32, 32)).sum().backward()  # 1x1 features at layer4: train-mode BN would raise


@pytest.mark.parametrize(("source", "name"), [("timm", "mobilenetv2_100"), ("torchvision", "mobilenet_v2")])
def test_mobilenetv2_backbone_first_stage_frozen(source, name):
    """test_mobilenet_v2.py::test_mobilenetv2_backbone, "Test MobileNetV2 with first stage frozen":
    mmdetection's ``conv1`` is freezable's ``stem``, its ``layer1`` (the first inverted-residual stage) ``stage1``."""
    fb = fz.FrozenBackbone(build(source, name), preset=f"{source}.frozen_stages_1")
    fb.train()
    groups = detect_groups(fb.backbone)
    for module_name in groups["stem"]:
        for param in fb.backbone.get_submodule(module_name).parameters():
            assert param.requires_grad is False
    for module_name in groups["stage1"]:
        assert_frozen(fb.backbone.get_submodule(module_name))


@pytest.mark.parametrize(("source", "name"), [("timm", "mobilenetv2_100"), ("torchvision", "mobilenet_v2")])
def test_mobilenetv2_backbone_trains_without_freezing(source, name):
    """test_mobilenet_v2.py::test_mobilenetv2_backbone, "Test MobileNetV2 forward": nothing frozen, so
    ``train()`` puts every BatchNorm in training mode."""
    fb = fz.FrozenBackbone(build(source, name)).unfreeze()
    fb.train()
    assert check_norm_state(fb.modules(), True)


@pytest.mark.parametrize(("source", "name"), [("timm", "mobilenetv2_100"), ("torchvision", "mobilenet_v2")])
def test_mobilenetv2_backbone_norm_eval(source, name):
    """test_mobilenet_v2.py::test_mobilenetv2_backbone, "Test MobileNetV2 with norm_eval=True"."""
    fb = fz.FrozenBackbone(build(source, name), norm_eval=True).unfreeze()
    fb.train()
    assert check_norm_state(fb.modules(), False)


@pytest.mark.parametrize(("source", "name"), [("timm", "swin_tiny_patch4_window7_224"), ("torchvision", "swin_t")])
def test_swin_transformer_frozen_stages_4(source, name):
    """test_swin.py::test_swin_transformer, ``SwinTransformer(frozen_stages=4)``: no backbone parameter trains.
    (The classifier head, which mmdetection's backbone lacks, is left out of the check.)"""
    fb = fz.FrozenBackbone(build(source, name), preset=f"{source}.frozen_stages_4")
    fb.train()
    for p in backbone_parameters(fb).values():
        assert not p.requires_grad
