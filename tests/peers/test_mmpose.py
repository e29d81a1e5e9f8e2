"""mmpose's backbone freezing tests, ported to freezable.

Source: open-mmlab/mmpose, tests/test_models/test_backbones/ (test_hrnet.py, test_csp_darknet.py,
test_swin.py). mmpose's HRNet, CSPDarknet and SwinTransformer map to timm's ``hrnet_w18_small``,
``cs3darknet_s`` (the YOLOv5-style CSPDarknet) and ``swin_tiny_patch4_window7_224`` / torchvision's
``swin_t``, built on the meta device. ``frozen_stages=k`` -> ``freeze_to("stagek")`` / the presets.
Deliberate differences: freezable's wrapped classifiers keep a trainable ``head``; an out-of-range stage is a
``FreezableError`` (a ``ValueError``, as mmpose raises).
"""

from __future__ import annotations

import pytest

import freezable as fz
from freezable.errors import PresetError
from peers._peer import (
    FINAL_NORM_PENDING,
    HRNET_TRANSITIONS_PENDING,
    assert_frozen,
    backbone_parameters,
    build,
    check_norm_state,
)


def _assert_hrnet_first_three_stages_frozen(model) -> None:
    """The assertions of test_hrnet.py::TestHrnet::test_hrnet_backbone for ``frozen_stages=3``."""
    assert not model.bn1.training  # mmpose: norm1, norm2
    assert not model.bn2.training
    for layer in [model.conv1, model.bn1, model.conv2, model.bn2]:
        for param in layer.parameters():
            assert not param.requires_grad
    for i in range(1, 3 + 1):
        assert_frozen(model.layer1 if i == 1 else getattr(model, f"stage{i}"))
        assert_frozen(getattr(model, f"transition{i}"))  # mmpose: transition{i} goes with stage i


def test_hrnet_backbone_first_three_stages_frozen():
    """test_hrnet.py::TestHrnet::test_hrnet_backbone, "Test HRNet with the first three stages frozen",
    with freezable's detected groups (``transition{i}`` in ``stage{i}``, as mmpose)."""
    fb = fz.FrozenBackbone(build("timm", "hrnet_w18_small"), trainable=["head"]).freeze_to("stage3")
    fb.train()
    _assert_hrnet_first_three_stages_frozen(fb.backbone)
    assert all(p.requires_grad for p in fb.backbone.stage4.parameters())


def test_hrnet_backbone_first_three_stages_frozen_with_the_preset():
    """test_hrnet.py::TestHrnet::test_hrnet_backbone, "Test HRNet with the first three stages frozen", with the
    ``timm.hrnet.backbone`` preset less ``stage4``: today the preset puts ``transition3`` in ``stage4``."""
    fb = fz.FrozenBackbone(build("timm", "hrnet_w18_small"), preset="timm.hrnet.backbone", trainable=["stage4"])
    fb.train()
    _assert_hrnet_first_three_stages_frozen(fb.backbone)


def test_csp_darknet_invalid_frozen_stages():
    """test_csp_darknet.py::TestCSPDarknetBackbone::test_invalid_frozen_stages (``frozen_stages=6`` of 4+1)."""
    fb = fz.FrozenBackbone(build("timm", "cs3darknet_s"))
    with pytest.raises(ValueError, match=r"unknown freeze group 'stage6'"):
        fb.freeze_to("stage6")
    with pytest.raises(PresetError, match="timm.frozen_stages_6"):
        fz.FrozenBackbone(build("timm", "cs3darknet_s"), preset="timm.frozen_stages_6")


def test_csp_darknet_frozen_stages():
    """test_csp_darknet.py::TestCSPDarknetBackbone::test_frozen_stages (``frozen_stages=1``)."""
    fb = fz.FrozenBackbone(build("timm", "cs3darknet_s"), preset="timm.frozen_stages_1")
    fb.train()
    model = fb.backbone
    for mod in model.stem.modules():
        for param in mod.parameters():
            assert not param.requires_grad
    for i in range(1, 1 + 1):
        assert_frozen(model.stages[i - 1])  # mmpose: stage{i}
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_csp_darknet_norm_eval():
    """test_csp_darknet.py::TestCSPDarknetBackbone::test_norm_eval."""
    fb = fz.FrozenBackbone(build("timm", "cs3darknet_s"), norm_eval=True).unfreeze()
    fb.train()
    assert not check_norm_state(fb.modules(), True)
    assert check_norm_state(fb.modules(), False)  # stronger than mmpose's: every BatchNorm, not some


@pytest.mark.parametrize(("source", "name"), [("timm", "swin_tiny_patch4_window7_224"), ("torchvision", "swin_t")])
def test_swin_transformer_frozen_stages_4(source, name):
    """test_swin.py::TestSwin::test_swin_transformer, ``SwinTransformer(frozen_stages=4)``: no parameter trains
    (the classifier head, which mmpose's backbone lacks, left out)."""
    fb = fz.FrozenBackbone(build(source, name)).unfreeze().freeze_to("stage4")  # as mmpose: trainable, then frozen
    fb.train()
    for p in backbone_parameters(fb).values():
        assert not p.requires_grad
