"""fastai's freezing cells, ported to freezable.

Sources (fastai/fastai notebooks): nbs/12_optimizer.ipynb, "Freezing part of the model" (``Optimizer.freeze_to``,
``unfreeze``, and the ``force_train`` cell), and nbs/18a_callback.training.ipynb, the ``BnFreeze`` cells
(``cnn_learner``/``vision_learner(..., train_bn=False)`` with and without ``cbs=BnFreeze``).
fastai's layer groups are freezable's staged groups; ``freeze_to(n)`` by index is ``freeze_to(name)`` by name
(the name of the n-th group's predecessor); ``train_bn`` is the same knob.

Deliberate differences: fastai freezes through the optimizer's param groups, freezable through the model's
groups. fastai's ``force_train`` marks single parameters; freezable's ``train_bn=True`` marks the norm layers of
the groups a freeze call names. And the headline one: in fastai, ``train_bn=False`` alone still lets the frozen
BatchNorms update their running statistics (the notebook asserts ``test_ne``) until ``BnFreeze`` is added;
freezable's frozen BatchNorms are held in eval, so ``freeze(..., train_bn=False)`` is fastai's
``train_bn=False`` plus ``BnFreeze`` and the statistics never move.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import freezable as fz


class ThreeGroups(fz.Freezable, nn.Module):
    """fastai's ``[tst_params(), tst_params(), tst_params()]``: three groups of four parameters; the norms sit
    at positions 1 and 3 of each, where the ``force_train`` cell marks its parameters."""

    freeze_groups = {"g0": "g0", "g1": "g1", "g2": "g2"}

    def __init__(self) -> None:
        super().__init__()
        for name in self.freeze_groups:
            setattr(self, name, nn.Sequential(nn.Linear(2, 2, bias=False), nn.LayerNorm(2, bias=False),
                                              nn.Linear(2, 2, bias=False), nn.LayerNorm(2, bias=False)))


def _req_grad(module: nn.Module) -> list[bool]:
    return [p.requires_grad for p in module.parameters()]


def test_optimizer_freeze_to_and_unfreeze():
    """nbs/12_optimizer.ipynb, "Freezing the first layer": ``opt.freeze_to(1)``, then ``opt.unfreeze()``."""
    model = ThreeGroups()
    model.freeze_to("g0")  # fastai: freeze_to(1), the first group frozen
    assert _req_grad(model.g0) == [False] * 4
    for i in (1, 2):
        assert _req_grad(getattr(model, f"g{i}")) == [True] * 4
    model.unfreeze()
    for i in range(3):
        assert _req_grad(getattr(model, f"g{i}")) == [True] * 4


def test_optimizer_freeze_to_negative_index_by_name():
    """fastai's ``freeze_to(-n)`` (freeze all but the last n groups), as the transfer-learning recipes use it:
    the staged groups of a resnet are ``stem, stage1..4, head``; ``freeze_to(-2)`` is ``freeze_to("stage3")``."""
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False))
    staged = ("stem", "stage1", "stage2", "stage3", "stage4", "head")
    for n in (-2, -3):
        fb.freeze_to(staged[n - 1])
        assert {g for g in fb.frozen_groups if not g.startswith("block")} - {"backbone"} == set(staged[:n])
    fb.unfreeze()
    assert fb.frozen_groups == ()


def test_optimizer_force_train_keeps_norm_parameters_trainable():
    """nbs/12_optimizer.ipynb, ``force_train`` cell: ``opt.freeze()`` (all but the last group) with params[1][1]
    and params[1][3] forced to train -> ``[False]*4``, ``[False, True, False, True]``, ``[True]*4``."""
    model = ThreeGroups()
    model.freeze("g0")
    model.freeze("g1", train_bn=True)  # fastai marks the parameters; freezable marks g1's norm layers
    assert _req_grad(model.g0) == [False] * 4
    assert _req_grad(model.g1) == [False, True, False, True]
    assert _req_grad(model.g2) == [True] * 4


def _learner(train_bn: bool) -> tuple[fz.FrozenBackbone, nn.Module]:
    """fastai's ``vision_learner(dls, resnet18, train_bn=...)``: the body frozen, the head trains."""
    torch.manual_seed(0)
    fb = fz.FrozenBackbone(timm.create_model("resnet18", pretrained=False, num_classes=2), trainable=["head"])
    fb.freeze("backbone", train_bn=train_bn)
    return fb, fb.backbone.bn1  # fastai: learn1.model[0][1], the body's first BatchNorm


def _fit_one_epoch(fb: fz.FrozenBackbone) -> None:
    """``learn1.fit(1, lr=0.02)`` on a few random batches (MNIST_TINY needs a download)."""
    opt = torch.optim.SGD(fb.trainable_parameters(), lr=0.02)
    fb.train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 2, (2,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(fb(x), y).backward()
    opt.step()


def test_bnfreeze_keeps_running_statistics():
    """nbs/18a_callback.training.ipynb, BnFreeze cells: with ``train_bn=False`` fastai asserts the running mean
    changed (``test_ne``) and, with ``cbs=BnFreeze``, that it did not (``test_eq``). freezable's frozen BatchNorm
    is held in eval without a callback (BnFreeze is built in): the one freezable case asserts ``equal``."""
    fb, bn = _learner(train_bn=False)
    m = bn.running_mean.clone()
    _fit_one_epoch(fb)
    assert torch.equal(bn.running_mean, m)
    assert not bn.training and not bn.weight.requires_grad


def test_train_bn_true_trains_the_frozen_body_norms():
    """fastai's default ``train_bn=True`` (the same notebook, before ``BnFreeze``): the frozen body's BatchNorms
    keep training, affine parameters and statistics both."""
    fb, bn = _learner(train_bn=True)
    m, w = bn.running_mean.clone(), bn.weight.detach().clone()
    _fit_one_epoch(fb)
    assert bn.training and bn.weight.requires_grad
    assert not torch.equal(bn.running_mean, m) and not torch.equal(bn.weight, w)
    assert not fb.backbone.conv1.weight.requires_grad
