"""timm's freeze/unfreeze tests, ported to freezable.

Source: huggingface/pytorch-image-models, tests/test_utils.py (test_freeze_unfreeze,
test_freeze_unfreeze_string_input, test_freeze_unfreeze_bn_root). ``timm.utils.freeze(model, names)`` ->
a freeze group registered from the same names, then ``freeze(group)``; ``unfreeze`` likewise.

Deliberate difference: timm swaps each frozen ``BatchNorm2d`` for a ``FrozenBatchNorm2d`` (and back on
unfreeze); freezable keeps the ``BatchNorm2d`` module (same class, same ``state_dict``) and holds it in eval, so
its statistics stay bit-identical through ``train()``. Where timm asserts ``isinstance(bn, FrozenBatchNorm2d)``
this port asserts what that swap is for: no grad, eval mode after ``train()``, running stats unchanged. timm
freezes a submodule by calling ``freeze`` on it (``freeze(model.layer1[0], ['bn1'])``); freezable's groups live
on the model, named from its root (``"layer1.0.bn1"``). timm refuses a BatchNorm as the root (it cannot swap the
root); freezable can freeze one.
"""

from __future__ import annotations

import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import BatchNorm2d

import freezable as fz


def _bn_frozen(bn: nn.Module) -> bool:
    """What timm's FrozenBatchNorm2d gives: no grad, inference behaviour after train(), stats unchanged."""
    before = bn.running_mean.clone()
    bn.train()
    bn(torch.randn(2, bn.num_features, 2, 2))
    return (isinstance(bn, BatchNorm2d) and not bn.training and torch.equal(bn.running_mean, before)
            and not any(p.requires_grad for p in bn.parameters()))


def _bn_trainable(bn: nn.Module) -> bool:
    bn.train()
    return isinstance(bn, BatchNorm2d) and bn.training and all(p.requires_grad for p in bn.parameters())


def _resnet18() -> fz.FrozenBackbone:
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False)).unfreeze()
    fb.register_freeze_group("some", "layer1", "layer2.0")  # timm: freeze(model, ['layer1', 'layer2.0'])
    fb.register_freeze_group("bn", "layer1.0.bn1")
    return fb


def test_freeze_unfreeze():
    """tests/test_utils.py::test_freeze_unfreeze."""
    fb = _resnet18()
    model = fb.backbone

    # Freeze all
    fb.freeze()
    assert model.fc.weight.requires_grad is False
    assert model.layer1[0].conv1.weight.requires_grad is False
    assert _bn_frozen(model.layer1[0].bn1)  # timm: isinstance(..., FrozenBatchNorm2d)

    # Unfreeze all
    fb.unfreeze()
    assert model.fc.weight.requires_grad is True
    assert model.layer1[0].conv1.weight.requires_grad is True
    assert _bn_trainable(model.layer1[0].bn1)  # timm: isinstance(..., BatchNorm2d)

    # Freeze some
    fb.freeze("some")
    assert model.layer1[0].conv1.weight.requires_grad is False
    assert _bn_frozen(model.layer1[0].bn1)
    assert model.layer2[0].conv1.weight.requires_grad is False
    assert model.layer3[0].conv1.weight.requires_grad is True
    assert _bn_trainable(model.layer3[0].bn1)
    assert model.layer2[1].conv1.weight.requires_grad is True

    # Unfreeze some
    fb.unfreeze("some")
    assert model.layer1[0].conv1.weight.requires_grad is True
    assert _bn_trainable(model.layer1[0].bn1)
    assert model.layer2[0].conv1.weight.requires_grad is True

    # Freeze/unfreeze BN, from root (timm's "from direct parent" case is the same group here)
    fb.freeze("bn")
    assert _bn_frozen(model.layer1[0].bn1)
    fb.unfreeze("bn")
    assert _bn_trainable(model.layer1[0].bn1)


def test_freeze_unfreeze_string_input():
    """tests/test_utils.py::test_freeze_unfreeze_string_input (a single name, not a list)."""
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False)).unfreeze()
    fb.register_freeze_group("layer1", "layer1")
    fb.freeze("layer1")
    assert fb.backbone.layer1[0].conv1.weight.requires_grad is False
    fb.unfreeze("layer1")
    assert fb.backbone.layer1[0].conv1.weight.requires_grad is True


def test_freeze_unfreeze_bn_root():
    """tests/test_utils.py::test_freeze_unfreeze_bn_root: timm raises AssertionError for a BatchNorm root
    (it cannot swap the module it was handed); freezable has nothing to swap and freezes it."""
    bn = fz.FrozenBackbone(nn.BatchNorm2d(10))
    assert _bn_frozen(bn.backbone)
    bn.unfreeze()
    assert _bn_trainable(bn.backbone)
