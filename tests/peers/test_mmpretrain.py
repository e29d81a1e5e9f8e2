"""mmpretrain's backbone freezing tests, ported to freezable.

Source: open-mmlab/mmpretrain, tests/test_models/test_backbones/ (test_resnet.py, test_convnext.py,
test_efficientnet.py). ``frozen_stages=k`` -> ``freeze_to("stagek")`` / the ``frozen_stages_k`` presets,
``norm_eval=True`` -> ``FrozenBackbone(..., norm_eval=True)``, on timm and torchvision models built on the meta
device. Deliberate differences: freezable's wrapped classifiers keep a trainable ``head``; mmpretrain's
EfficientNet groups its blocks into 7 layers (stem, 5 block layers, final conv), timm's into ``stem`` and
``stage1..7`` (the final conv in ``stage7``), torchvision's into ``stem`` and ``stage1..5``: "every layer frozen"
is ``freeze_to`` of the last stage in each. An out-of-range stage is a ``FreezableError`` (a ``ValueError``, as
mmpretrain raises) naming the valid stages.
"""

from __future__ import annotations

import pytest

import freezable as fz
from freezable.detect import detect_groups
from peers._peer import assert_frozen, build, check_norm_state

SOURCES = ["timm", "torchvision"]


@pytest.mark.parametrize("source", SOURCES)
def test_resnet_norm_eval(source):
    """test_resnet.py::test_resnet, "Test ResNet50 norm_eval=True"."""
    fb = fz.FrozenBackbone(build(source, "resnet50"), norm_eval=True).unfreeze()
    fb.train()
    assert check_norm_state(fb.modules(), False)


@pytest.mark.parametrize("source", SOURCES)
def test_resnet_first_stage_frozen(source):
    """test_resnet.py::test_resnet, "Test ResNet50 with first stage frozen"."""
    fb = fz.FrozenBackbone(build(source, "resnet50"), trainable=["head"]).freeze_to("stage1")
    fb.train()
    model = fb.backbone
    assert model.bn1.training is False  # mmpretrain: model.norm1
    for layer in [model.conv1, model.bn1]:
        for param in layer.parameters():
            assert param.requires_grad is False
    assert_frozen(model.layer1)


@pytest.mark.parametrize("name", ["resnet50c", "resnet50d"])
def test_resnet_v1c_v1d_first_stage_frozen(name):
    """test_resnet.py::test_resnet_v1c and ::test_resnet_v1d, "Test ResNet50V1d with first stage frozen": timm's
    ``resnet50c``/``resnet50d`` hold the deep stem as ``conv1`` (a Sequential of three convs) and ``bn1``."""
    fb = fz.FrozenBackbone(build("timm", name), preset="timm.frozen_stages_1")
    fb.train()
    stem = [fb.backbone.conv1, fb.backbone.bn1]  # mmpretrain: model.stem
    assert all(check_norm_state(m.modules(), False) for m in stem)
    for m in stem:
        for param in m.parameters():
            assert param.requires_grad is False
    assert_frozen(fb.backbone.layer1)


@pytest.mark.parametrize(("source", "name"), [("timm", "convnext_atto"), ("torchvision", "convnext_tiny")])
def test_convnext_frozen_stages_2(source, name):
    """test_convnext.py::test_convnext, "Test frozen_stages": ``ConvNeXt(frozen_stages=2)`` puts
    ``downsample_layers[i]`` and ``stages[i]`` in eval for i < 2 and leaves them training for i >= 2.
    mmpretrain's ``downsample_layers[0]`` is the stem, ``downsample_layers[i]`` (i > 0) the downsample that
    timm keeps at the start of ``stages[i]`` and torchvision as ``features[2i]``: freezable's ``stage{i+1}``."""
    fb = fz.FrozenBackbone(build(source, name), trainable=["head"]).freeze_to("stage2")
    fb.train()
    groups = detect_groups(fb.backbone)
    for group in ("stem", "stage1", "stage2"):
        for module_name in groups[group]:
            assert not fb.backbone.get_submodule(module_name).training
    for group in ("stage3", "stage4"):
        for module_name in groups[group]:
            assert fb.backbone.get_submodule(module_name).training


@pytest.mark.parametrize(("source", "last"), [("timm", "stage7"), ("torchvision", "stage5")])
def test_efficientnet_every_stage_frozen(source, last):
    """test_efficientnet.py::test_efficientnet_backbone, "Test EfficientNet with first stage frozen"
    (``frozen_stages=7``: every layer of b0 frozen, BatchNorms in eval)."""
    fb = fz.FrozenBackbone(build(source, "efficientnet_b0"), trainable=["head"]).freeze_to(last)
    fb.train()
    groups = detect_groups(fb.backbone)
    for group in ["stem"] + [f"stage{i}" for i in range(1, int(last[5:]) + 1)]:
        for module_name in groups[group]:
            assert_frozen(fb.backbone.get_submodule(module_name))
    assert fb.frozen_groups[-1] == "backbone"  # the whole backbone: nothing left between it and the head


def test_efficientnet_frozen_stages_out_of_range():
    """test_efficientnet.py::test_efficientnet_backbone, ``EfficientNet(arch=arch, frozen_stages=12)`` raises
    ``ValueError``: freezable's ``FreezableError`` is one, and names the valid stages."""
    fb = fz.FrozenBackbone(build("timm", "efficientnet_b0"))
    before = fb.freeze_state()
    with pytest.raises(ValueError, match=r"unknown freeze group 'stage12'; did you mean .*'stage1'"):
        fb.freeze_to("stage12")
    with pytest.raises(fz.FreezableError):
        fb.freeze_to("stage12")
    assert fb.freeze_state() == before


@pytest.mark.parametrize("source", SOURCES)
def test_efficientnet_norm_eval(source):
    """test_efficientnet.py::test_efficientnet_backbone, "Test EfficientNet with norm eval"."""
    fb = fz.FrozenBackbone(build(source, "efficientnet_b0"), norm_eval=True).unfreeze()
    fb.train()
    assert check_norm_state(fb.modules(), False)
