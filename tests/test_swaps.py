"""Freeze state kept by name through module swaps (API.md 7.2): SyncBatchNorm, QAT, fusion, layers replaced by hand.

Training scripts swap modules after the model is built (``--sync-bn``, quantization-aware training, fusion):
the new module carries none of the marks of the one it replaced. Each scenario freezes first, swaps, then
trains or forwards in ``train()`` mode, and checks the frozen tensors bit by bit.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torch.ao.quantization as tq
import torchvision
from conftest import changed, snapshot
from torch import nn

import freezable as fz


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)


class Holder(fz.Freezable, nn.Module):
    """A ResNet under a mixin model: the third form, beside in place and wrapped."""

    freeze_groups = {"body": "net", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.net = resnet()
        self.net.fc = nn.Identity()
        self.head = nn.Linear(512, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


FORMS = {  # a model whose ResNet body is frozen and whose head trains, and that body
    "in_place": lambda: (lambda m: (m, m))(fz.freeze(resnet(), trainable=["head"])),
    "wrapped": lambda: (lambda fb: (fb, fb.backbone))(fz.FrozenBackbone(resnet(), trainable=["head"])),
    "mixin": lambda: (lambda h: (h, h.net))(Holder().freeze("body")),
}

CONVERSIONS = {
    "torch.convert_sync_batchnorm": nn.SyncBatchNorm.convert_sync_batchnorm,
    "timm.convert_sync_batchnorm": timm.layers.convert_sync_batchnorm,
}


def _norms(body: nn.Module, kind: type) -> dict[str, nn.Module]:
    return {n: m for n, m in body.named_modules() if isinstance(m, kind)}


def _statistics(body: nn.Module) -> list[str]:
    return [n for n, _ in body.named_buffers() if n.rpartition(".")[2] in ("running_mean", "running_var",
                                                                          "num_batches_tracked")]


@pytest.mark.parametrize("convert", CONVERSIONS.values(), ids=CONVERSIONS.keys())
@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_sync_batchnorm_conversion_after_freezing_stays_frozen(form, convert):
    model, body = form()
    converted = convert(model)
    assert converted is model  # the top module is no norm: converted in place, its children replaced
    body = body if form is not FORMS["mixin"] else model.net
    sync = _norms(body, nn.SyncBatchNorm)
    assert len(sync) == len(_norms(resnet(), nn.BatchNorm2d)) > 0
    before, stats = snapshot(body), _statistics(body)
    model.train()
    assert not any(m.training for m in sync.values())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad(set_to_none=False)
        model(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
    frozen = [n for n in before if not n.startswith("fc.")]  # the in-place and wrapped bodies hold the head
    assert len(stats) == 3 * len(sync) and not changed(before, body) & set(frozen)  # 0 frozen tensors moved
    assert fz.check(model, opt).ok
    assert "conflict" not in model.freeze_summary()
    assert not _norms(body, nn.SyncBatchNorm)["bn1"].training


def test_the_guard_watches_a_swapped_in_norm_and_reports_a_change_by_hand():
    model = fz.freeze(resnet(), trainable=["head"])
    model.freeze("backbone", guard=True)
    nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()(torch.randn(2, 3, 32, 32))
    assert fz.check(model).ok
    with torch.no_grad():
        model.layer1[0].bn1.running_mean.add_(1.0)  # a change no freeze can stop
    model.eval()
    report = fz.check(model)
    assert not report.ok and "'layer1.0.bn1.running_mean' changed since freeze(guard=True)" in str(report)


def test_a_swapped_in_module_with_trainable_parameters_is_a_conflict_never_silently_decided():
    model = fz.freeze(resnet(), trainable=["head"])
    model.layer2[0].bn1 = nn.BatchNorm2d(128)  # a fresh, trainable layer at a frozen place
    model.train()
    new = model.layer2[0].bn1
    assert new.weight.requires_grad and new.training  # neither frozen nor held behind the user's back
    summary, report = model.freeze_summary(), fz.check(model)
    assert "conflict: 'layer2.0.bn1' (BatchNorm2d) was swapped in at a frozen place" in summary
    assert not report.ok and "'layer2.0.bn1' (BatchNorm2d) was swapped in at a frozen place" in str(report)
    model.freeze("stage2")  # the user decides
    assert not new.weight.requires_grad and not new.training and fz.check(model).ok


def test_a_module_replaced_by_hand_with_frozen_parameters_is_frozen_and_held_like_the_one_it_replaced():
    model = fz.freeze(resnet(), trainable=["head"]).train()
    old = model.layer1[0].bn2
    new = nn.BatchNorm2d(64)
    new.load_state_dict(old.state_dict())
    new.requires_grad_(False)
    model.layer1[0].bn2 = new
    before = snapshot(new)
    model(torch.randn(2, 3, 32, 32))  # the forward pre-hook sees the swap before it runs
    assert not new.training and not changed(before, new)
    assert fz.check(model).ok and "frozen by hand" not in model.freeze_summary()
    model.unfreeze()
    assert new.weight.requires_grad and new.train().training


# -- quantization-aware training ---------------------------------------------------------------------------------


def _qat_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.quantization.resnet18(quantize=False, num_classes=4)
    return fz.freeze(model, trainable=["head"])


def _prepare_qat(model: nn.Module) -> nn.Module:
    model.eval()
    model.fuse_model(is_qat=True)
    model.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        tq.prepare_qat(model.train(), inplace=True)
    return model


def _observers(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, tq.FakeQuantizeBase)}


def test_qat_with_a_frozen_body_keeps_its_weights_statistics_and_quantization_parameters():
    model = _prepare_qat(_qat_resnet())
    model.train()(torch.randn(2, 3, 32, 32))  # observers that observed nothing yet get their ranges once
    body = [n for n in snapshot(model) if not n.startswith("fc.")]
    before = snapshot(model)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        model.train()(torch.randn(2, 3, 32, 32) * 3).square().mean().backward()
        opt.step()
    moved = changed(before, model)
    assert len(body) > 400 and not moved & set(body)  # weights, BN statistics, observers, scales: 0 moved
    assert {"fc.weight", "fc.bias"} <= moved  # the head trains, and its own observers observe
    assert any(n.startswith("fc.") and "min_val" in n for n in moved)
    assert fz.check(model).ok
    # the fake quantization itself still applies in the frozen body
    x = torch.randn(2, 3, 32, 32)
    conv = model.conv1
    assert not torch.equal(conv(x), nn.functional.conv2d(x, conv.weight, None, 2, 3))


def test_observers_resume_observing_on_unfreeze():
    model = _prepare_qat(_qat_resnet())
    model.train()(torch.randn(2, 3, 32, 32))
    model.unfreeze()
    before = snapshot(model)
    model.train()(torch.randn(2, 3, 32, 32) * 5)
    moved = changed(before, model)
    assert any(n.startswith("layer1.") and "min_val" in n for n in moved)
    assert any(n.startswith("layer1.") and "running_mean" in n for n in moved)


def test_fusion_after_freezing_keeps_the_fused_modules_frozen():
    model = fz.freeze(torchvision.models.quantization.resnet18(quantize=False, num_classes=4), trainable=["head"])
    model.eval()
    model.fuse_model(is_qat=True)  # conv + bn + relu into one module, Identity left behind
    model.train()
    fused = model.layer1[0].conv1
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    before = snapshot(model)
    model(torch.randn(2, 3, 32, 32))
    assert not changed(before, model) and fz.check(model).ok


def test_swap_bookkeeping_costs_nothing_when_no_module_was_registered():
    model = fz.freeze(resnet(), trainable=["head"])
    seen = copy.copy(model.__dict__["_freezable_registrations_seen"])
    model(torch.randn(1, 3, 32, 32))
    assert model.__dict__["_freezable_registrations_seen"] == seen
