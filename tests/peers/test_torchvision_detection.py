"""torchvision's ``trainable_backbone_layers`` test, ported to freezable.

Source: pytorch/vision, test/test_models_detection_utils.py
(TestModelsDetectionUtils::test_resnet_fpn_backbone_frozen_layers, parametrised over
``trainable_layers`` 0..5). torchvision's own ``resnet_fpn_backbone(trainable_layers=N)`` is the oracle:
freezable must freeze exactly the parameters it freezes.

Deliberate differences: torchvision counts frozen parameters (53, 43, 24, 11, 1, 0 of a ResNet-50 whose
norms are ``FrozenBatchNorm2d``, without parameters); freezable keeps ``BatchNorm2d`` (held in eval when
frozen), so the port compares the ``requires_grad`` of every parameter, by name, with torchvision's built with
``norm_layer=nn.BatchNorm2d``, and checks that the frozen BatchNorms stay in eval through ``train()``, which
torchvision's ``FrozenBatchNorm2d`` gives. On main, ``trainable_backbone_layers=N`` is freezable's
``freeze_to`` of the staged group ``5 - N`` places into ``stem, stage1..4`` (nothing for ``N = 5``); the
``torchvision.detection.trainable_backbone_layers_N`` presets on a torchvision detection model are pending.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import backbone_utils

import freezable as fz
from peers._peer import DETECTION_PENDING, check_norm_state

STAGED = ("stem", "stage1", "stage2", "stage3", "stage4")
CASES = [(0, 53), (1, 43), (2, 24), (3, 11), (4, 1), (5, 0)]


def _torchvision_body(train_layers: int) -> dict[str, bool]:
    """requires_grad by parameter name of torchvision's own ResNet-50 FPN body (with BatchNorm2d)."""
    with torch.device("meta"):
        model = backbone_utils.resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=train_layers
        )
    return {n.removeprefix("body."): p.requires_grad for n, p in model.named_parameters() if n.startswith("body.")}


@pytest.mark.parametrize(("train_layers", "exp_froz_params"), CASES)
def test_resnet_fpn_backbone_frozen_layers(train_layers, exp_froz_params):
    """test_models_detection_utils.py::TestModelsDetectionUtils::test_resnet_fpn_backbone_frozen_layers."""
    expected = _torchvision_body(train_layers)
    with torch.device("meta"):
        fb = fz.FrozenBackbone(torchvision.models.resnet50()).unfreeze()
    if train_layers < 5:
        fb.freeze_to(STAGED[4 - train_layers])
    fb.train()
    got = {n: p.requires_grad for n, p in fb.backbone.named_parameters() if n in expected}
    assert got == expected
    # torchvision's count, on the parameters FrozenBatchNorm2d lacks (every conv weight, in order)
    conv = [not p.requires_grad for n, p in fb.backbone.named_parameters()
            if n in expected and isinstance(fb.backbone.get_submodule(n.rpartition(".")[0]), nn.Conv2d)]
    assert all(conv[:exp_froz_params]) and not any(conv[exp_froz_params:])
    frozen = [fb.backbone.get_submodule(g) for g in ("conv1", "layer1", "layer2", "layer3", "layer4")[:5 - train_layers]]
    assert all(check_norm_state(m.modules(), False) for m in frozen)


@pytest.mark.parametrize(("train_layers", "exp_froz_params"), CASES)
def test_resnet_fpn_backbone_frozen_layers_preset(train_layers, exp_froz_params):
    """test_models_detection_utils.py::TestModelsDetectionUtils::test_resnet_fpn_backbone_frozen_layers, through
    the ``torchvision.detection.trainable_backbone_layers_N`` preset on a Faster R-CNN."""
    expected = _torchvision_body(train_layers)
    with torch.device("meta"):
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    fb = fz.FrozenBackbone(model, preset=f"torchvision.detection.trainable_backbone_layers_{train_layers}")
    fb.train()
    body = {n.removeprefix("backbone.body."): p.requires_grad for n, p in fb.backbone.named_parameters()
            if n.startswith("backbone.body.")}
    assert body == expected
    body_module = fb.backbone.backbone.body
    frozen = [body_module.get_submodule(g) for g in ("conv1", "layer1", "layer2", "layer3", "layer4")[:5 - train_layers]]
    assert all(check_norm_state(m.modules(), False) for m in frozen)
