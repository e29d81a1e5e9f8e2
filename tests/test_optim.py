"""param_groups and unfreeze(optimizer=): optimizers that stay right while groups are (un)frozen."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import Net, changed, full_state, snapshot
from torch import nn

import freezable as fz
from freezable.optim import add_missing


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def _ids(params) -> list[int]:
    return [id(p) for p in params]


def test_param_groups_cover_every_parameter_once_in_group_order(net):
    groups = net.freeze("features").param_groups(0.1, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["features", "features.no_decay", "classifier", "classifier.no_decay"]
    flat = [id(p) for g in groups for p in g["params"]]
    assert sorted(flat) == sorted(_ids(net.parameters())) and len(flat) == len(set(flat))
    for g in groups:
        no_decay = g["name"].endswith(".no_decay")
        assert all((p.ndim <= 1) == no_decay for p in g["params"])
        assert g["weight_decay"] == (0.0 if no_decay else 0.01) and g["lr"] == 0.1


def test_param_groups_skip_umbrellas_and_add_ungrouped_rest():
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4))
    names = [g["name"] for g in fb.param_groups(1.0) if not g["name"].endswith(".no_decay")]
    assert names == ["stem"] + [f"block{i}" for i in range(1, 9)] + ["head"]  # the stages hold the blocks

    class Partial(fz.Freezable, nn.Sequential):
        freeze_groups = {"first": "0"}

    model = Partial(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = model.param_groups(1.0)
    assert [g["name"] for g in groups] == ["first", "first.no_decay", "ungrouped", "ungrouped.no_decay"]
    assert _ids(groups[2]["params"]) == [id(model[1].weight)]


def test_lr_scale_gives_discriminative_learning_rates(net):
    groups = net.param_groups(0.01, lr_scale={"features": 0.1, "classifier": 2})
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx(
        {"features": 0.001, "features.no_decay": 0.001, "classifier": 0.02, "classifier.no_decay": 0.02})


def test_lr_scale_of_an_umbrella_applies_to_the_groups_inside_it():
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4))
    groups = fb.param_groups(1.0, lr_scale={"backbone": 0.1, "stage4": 0.5})
    lrs = {g["name"]: g["lr"] for g in groups if not g["name"].endswith(".no_decay")}
    blocks = {f"block{i}": 0.5 if i > 6 else 0.1 for i in range(1, 9)}  # resnet18's stage4 holds blocks 7-8
    assert lrs == pytest.approx({"stem": 0.1, **blocks, "head": 1.0})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"lr_scale": {"feature": 0.1}}, fz.FreezableError, r"'feature'.*did you mean 'features'"),
    ({"lr_scale": {"backbone": 0.1}}, fz.FreezableError, r"'backbone', which is neither a freeze group nor"),
    ({"lr_scale": {"features": -1}}, fz.FreezableError, r"lr_scale\['features'\] must be a finite number >= 0"),
    ({"weight_decay": "x"}, TypeError, "weight_decay must be a number"),
])
def test_param_groups_errors(net, kwargs, error, match):
    with pytest.raises(error, match=match):
        net.param_groups(0.1, **kwargs)
    with pytest.raises(fz.FreezableError, match="lr must be a finite number"):
        net.param_groups(float("nan"))


@pytest.mark.parametrize("make_opt", [
    lambda g: torch.optim.AdamW(g, weight_decay=0.1),
    lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, weight_decay=0.1),
])
def test_optimizer_built_once_trains_groups_unfrozen_later(net, images, make_opt):
    net.freeze("features").train()
    opt = make_opt(net.param_groups(0.05, weight_decay=0.1))
    frozen = snapshot(net.features)
    for _ in range(2):
        _step(net, opt, images)
    assert not changed(frozen, net.features)
    assert all(len(opt.state[p]) == 0 for p in net.features.parameters())  # no state kept for frozen ones
    net.unfreeze("features")
    _step(net, opt, images)
    assert all(p.grad is not None for p in net.features.parameters())  # a conv bias before BN gets zero grads
    assert changed(frozen, net.features) >= {n for n, _ in net.features.named_parameters() if n.endswith("weight")}
    net.freeze("classifier")
    head = snapshot(net.classifier)
    _step(net, opt, images)
    assert not changed(head, net.classifier)


@pytest.mark.parametrize("make_sched", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6),
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)),
])
def test_lr_schedulers_keep_working_across_unfreezing(net, images, make_sched):
    net.freeze("features")
    opt = torch.optim.SGD(net.param_groups(0.1, lr_scale={"features": 0.1}), lr=0.1, momentum=0.9)
    sched = make_sched(opt)
    for step in range(5):
        if step == 2:
            net.unfreeze("features")
        _step(net, opt, images)
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["features"] == pytest.approx(lrs["classifier"] * 0.1) or isinstance(
        sched, torch.optim.lr_scheduler.OneCycleLR)
    assert len(opt.param_groups) == 4 and all(len(opt.state[p]) > 0 for p in net.parameters())


def test_unfreeze_with_optimizer_adds_one_group_without_duplicates(net, images):
    net.freeze()
    net.unfreeze("classifier")
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=0.01, betas=(0.8, 0.9), weight_decay=0.2)
    net.unfreeze("features", optimizer=opt)
    assert len(opt.param_groups) == 2
    added = opt.param_groups[1]
    assert _ids(added["params"]) == _ids(net.features.parameters())
    assert (added["lr"], added["betas"], added["weight_decay"], added["name"]) == (0.01, (0.8, 0.9), 0.2,
                                                                                     "unfrozen:features")
    net.unfreeze(optimizer=opt, lr=0.5)  # everything is already there: no new group
    assert len(opt.param_groups) == 2
    before = snapshot(net)
    _step(net, opt, images)
    assert changed(before, net) >= {n for n, _ in net.named_parameters() if n.endswith("weight")}


def test_unfreeze_lr_sets_the_new_groups_rate(net):
    net.freeze("features")
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    net.unfreeze("features", optimizer=opt, lr=0.003)
    assert (opt.param_groups[1]["lr"], opt.param_groups[1]["initial_lr"]) == (0.003, 0.003)
    opt.step()
    sched.step()  # StepLR reads every group: the new one too
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0003)


def test_unfreeze_with_optimizer_keeps_onecycle_going(net, images):
    net.freeze("features")
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6)
    _step(net, opt, images)
    sched.step()
    net.unfreeze("features", optimizer=opt)
    for _ in range(3):
        _step(net, opt, images)
        sched.step()
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"] != 0.1  # the new group follows the cycle


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("feature",), {"optimizer": "opt"}, fz.FreezableError, "unknown freeze group 'feature'"),
    (("features",), {"optimizer": "not an optimizer"}, TypeError, "must be a torch.optim.Optimizer"),
    (("features",), {"lr": 0.1}, fz.FreezableError, "pass optimizer= too"),
    (("features",), {"optimizer": "opt", "lr": -1.0}, fz.FreezableError, "lr must be a finite number >= 0"),
])
def test_unfreeze_validates_before_changing_anything(net, args, kwargs, error, match):
    net.freeze("features")
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    kwargs = {k: (opt if v == "opt" else v) for k, v in kwargs.items()}
    before, groups_before = full_state(net), len(opt.param_groups)
    with pytest.raises(error, match=match):
        net.unfreeze(*args, **kwargs)
    assert full_state(net) == before and len(opt.param_groups) == groups_before


def test_add_missing_skips_frozen_and_known_parameters():
    a, b, c = (nn.Parameter(torch.ones(1)) for _ in range(3))
    c.requires_grad_(False)
    opt = torch.optim.SGD([a], lr=1.0)
    group = add_missing(opt, [a, b, b, c], name="new")
    assert _ids(group["params"]) == [id(b)] and group["name"] == "new"


def test_param_groups_is_on_every_freezable():
    assert isinstance(Net().param_groups(1.0), list)
