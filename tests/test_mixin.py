"""The Freezable mixin: API.md section 1, behaviours B1-B6."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import re

import pytest
import timm
import torch
import torchvision
from conftest import Net, changed, full_state, modes, snapshot
from torch import nn

import freezable as fz
from freezable._state import is_frozen, is_held


class MyAlexNet(fz.Freezable, torchvision.models.AlexNet):
    freeze_groups = {"features": "features", "classifier": "classifier"}


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int = 3,
                set_to_none: bool = True) -> None:
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        model(x).square().mean().backward()
        opt.step()


# -- groups ---------------------------------------------------------------------------------------


def test_class_groups_and_registration_order(net):
    net.register_freeze_group("conv1", "features.0")
    assert net.freeze_group_names == ("features", "classifier", "conv1")


@pytest.mark.parametrize(
    "spec, modules, parameters",
    [
        ("features.0", ("features.0",), ()),
        ("features.[04]", ("features.0", "features.4"), ()),
        ("features.*", ("features.0", "features.1", "features.2", "features.3", "features.4", "features.5",
                        "features.6", "features.7", "features.8"), ()),
        (re.compile(r"features\.[15]"), ("features.1", "features.5"), ()),
        (lambda name, m: isinstance(m, nn.BatchNorm2d), ("features.1", "features.5"), ()),
        ("classifier.1.bias", (), ("classifier.1.bias",)),
        ("*.weight", (), ("features.0.weight", "features.1.weight", "features.4.weight", "features.5.weight",
                          "classifier.1.weight")),
    ],
    ids=["dotted", "glob", "glob-star", "regex", "callable", "parameter", "parameter-glob"],
)
def test_every_spec_kind_resolves(net, spec, modules, parameters):
    net.register_freeze_group("g", spec)
    assert net.freeze_group("g") == fz.Group(modules=modules, parameters=parameters)


def test_freeze_group_is_a_read_only_view_relative_to_the_freeze_root():
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3))
    stem = fb.freeze_group("stem")
    assert stem == fz.Group(modules=("conv1", "bn1", "relu", "maxpool"))  # the backbone's own names
    with pytest.raises(dataclasses.FrozenInstanceError):
        stem.modules = ()  # type: ignore[misc]
    assert [n for n, _ in stem.named_parameters(fb.backbone)] == ["conv1.weight", "bn1.weight", "bn1.bias"]


class Counting(Net):
    """A subclass that caches something derived from the freeze state, through the documented hook."""

    def _on_freeze_change(self) -> None:
        super()._on_freeze_change()
        self.seen = [*getattr(self, "seen", []), (self.frozen_groups, self.features[1].training)]


def test_on_freeze_change_runs_after_every_change_of_freeze_state_with_parts_already_held():
    net = Counting().train()
    net.freeze("features")
    net.unfreeze("features")
    net.freeze_to("features")
    net.load_freeze_state(Counting().freeze_state())
    held, free = (("features",), False), ((), True)
    assert net.seen == [held, free, free, held, free]  # freeze_to: unfreeze the rest, then freeze
    net.train().freeze_summary()
    assert len(net.seen) == 5  # reading and train() change no freeze state


def test_parameter_not_brought_by_a_module_belongs_on_its_own():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16, depth=2,
                            num_classes=3)
    fb = fz.FrozenBackbone(vit, trainable=["cls_token", "pos_embed", "head"])
    assert vit.cls_token.requires_grad and vit.pos_embed.requires_grad
    assert not vit.patch_embed.proj.weight.requires_grad
    fb.register_freeze_group("tokens", "cls_token", "pos_embed")
    fb.freeze("tokens")
    assert not vit.cls_token.requires_grad and "tokens" in fb.frozen_groups


def test_later_calls_win_where_groups_overlap(net):
    net.register_freeze_group("bn", lambda name, m: isinstance(m, nn.BatchNorm2d))
    net.freeze().unfreeze("classifier")
    assert net.frozen_groups == ("features", "bn")
    net.unfreeze("bn")
    assert net.features[1].weight.requires_grad and not net.features[0].weight.requires_grad
    assert net.frozen_groups == ()
    net.freeze("features")
    assert net.frozen_groups == ("features", "bn")


class Lambdas(Net):
    freeze_groups = {"convs": lambda name, m: isinstance(m, nn.Conv2d), "classifier": "classifier"}


def test_callable_specs_still_deepcopy_and_pickle():
    model = Lambdas().freeze("convs")
    model.register_freeze_group("bns", lambda name, m: isinstance(m, nn.BatchNorm2d))
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    for other in (copied, loaded):
        assert other.freeze_group_names == ("convs", "classifier", "bns")
        assert other.frozen_groups == ("convs",)


def test_trainable_parameters_are_what_the_optimizer_needs(net):
    net.freeze("features")
    names = [name for name, _ in net.named_trainable_parameters()]
    assert names == ["classifier.1.weight", "classifier.1.bias"]
    assert [id(p) for p in net.trainable_parameters()] == [id(net.classifier[1].weight), id(net.classifier[1].bias)]


def test_freeze_and_unfreeze_return_the_model(net):
    assert net.freeze() is net and net.unfreeze() is net and net.train() is net


# -- B1: frozen parameters never move -------------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam": lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.5),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.1),
}


@pytest.mark.parametrize("set_to_none", [True, False], ids=["set_to_none", "zero_grads"])
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_frozen_parameters_stay_bit_identical_mid_training(net, images, make_optimizer, set_to_none):
    opt = make_optimizer(net.parameters())  # built before freezing, state built by the first steps
    train_steps(net, opt, images, steps=2, set_to_none=set_to_none)
    net.freeze("features")
    assert all(p.grad is None and not p.requires_grad for p in net.features.parameters())
    before = snapshot(net)
    train_steps(net, opt, images, steps=3, set_to_none=set_to_none)
    moved = changed(before, net)
    assert not any(name.startswith("features.") for name in moved)
    assert {"classifier.1.weight", "classifier.1.bias"} <= moved


# -- B2 / B3: frozen parts stay at inference ------------------------------------------------------


class PlainHolder(nn.Module):
    def __init__(self, body: nn.Module, features: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.LazyLinear(2)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


class Holder(fz.Freezable, PlainHolder):
    freeze_groups = {"body": "body", "head": "head"}


def in_place_holder(body: nn.Module, features: int) -> PlainHolder:
    return fz.freezable(PlainHolder(body, features)).register_freeze_group("body", "body").register_freeze_group(
        "head", "head")


HOLDERS = pytest.mark.parametrize("make_holder", [Holder, in_place_holder], ids=["mixin", "in_place"])


NORMS = {
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4), (6, 4)),
    "BatchNorm1d-3d-input": (lambda: nn.BatchNorm1d(4), (6, 4, 5)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(4), (6, 4, 5, 5)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(4), (6, 4, 3, 3, 3)),
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(4), (6, 4, 5, 5)),
    "LazyBatchNorm2d": (lambda: nn.LazyBatchNorm2d(), (6, 4, 5, 5)),
    "timm.BatchNormAct2d": (lambda: timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU), (6, 4, 5, 5)),
    "InstanceNorm2d-tracked": (lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (6, 4, 5, 5)),
}


def _nest(model: nn.Module) -> nn.Module:
    """The model three containers deep."""
    return nn.Sequential(nn.ModuleDict({"inner": nn.ModuleList([nn.Identity(), model])}))


@HOLDERS
@pytest.mark.parametrize("make_norm, shape", NORMS.values(), ids=NORMS.keys())
def test_frozen_norm_statistics_stay_bit_identical_whoever_calls_train(make_norm, shape, make_holder):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    norm = make_norm()
    model = make_holder(nn.Sequential(nn.Sequential(norm)), features=4)
    model.eval()(x)  # materialise lazy modules
    outer = _nest(model)
    model.freeze("body")
    before = snapshot(norm)
    expected = model.eval()(x)
    for call in (outer.train, model.train, model.body.train, model.body[0].train, norm.train,
                 lambda: outer[0]["inner"].train(True)):
        call()
        out = outer[0]["inner"][1](x)
        assert torch.equal(out, expected)
        assert not changed(before, norm)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_train_at_every_nesting_level_keeps_norms_in_eval(depth, net, images):
    net.freeze("features")
    model: nn.Module = net
    levels = [net]
    for _ in range(depth):
        model = nn.Sequential(nn.Identity(), model)
        levels.append(model)
    before = snapshot(net.features)
    for level in levels:
        level.train()
        assert not net.features[1].training and not net.features[3].training  # BN and Dropout
        assert net.classifier.training
        model(images)
    assert not changed(before, net.features)


def test_train_on_an_inner_module_is_undone_before_its_forward(net, images):
    net.freeze("features").train()
    net.features.train()  # user code often calls self.backbone.train()
    net.features[1].train()
    before = snapshot(net.features)
    torch.manual_seed(3)
    out_features = net.features(images)
    assert not changed(before, net.features)
    assert not net.features[1].training and not net.features[3].training
    assert torch.equal(net.features.eval()(images), out_features)


@pytest.mark.parametrize("freeze", [fz.FrozenBackbone, fz.freeze], ids=["wrapped", "in_place"])
def test_dropout_and_drop_path_in_frozen_parts_are_off(freeze):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16, depth=2,
                            num_classes=3, drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    fb = freeze(vit, trainable=["head"])
    head_drop = vit.head_drop
    vit.head_drop = nn.Identity()  # compare the frozen part only
    expected = fb.eval()(x)
    fb.train()
    assert torch.equal(fb(x), expected) and torch.equal(fb(x), expected)
    vit.head_drop = head_drop


def test_parameter_free_modules_in_a_frozen_group_count_as_frozen(net):
    net.freeze("features")
    assert is_frozen(net.features[3]) and is_held(net.features[3])  # Dropout
    net.train()
    assert not net.features[3].training and net.classifier[0].training


def test_freeze_and_unfreeze_take_effect_at_once(net):
    net.train()
    net.freeze("features")
    assert not net.features.training and not net.features[1].training
    net.unfreeze("features")
    assert net.features.training and net.features[1].training  # back to the model's own mode
    net.eval().freeze("features").unfreeze("features")
    assert not net.features[1].training


class MyResNet(fz.Freezable, torchvision.models.ResNet):
    freeze_groups = {"body": ["conv1", "bn1", "layer*"], "fc": "fc"}


def in_place_resnet(*args, **kwargs) -> torchvision.models.ResNet:
    model = fz.freezable(torchvision.models.ResNet(*args, **kwargs))
    return model.register_freeze_group("body", "conv1", "bn1", "layer*").register_freeze_group("fc", "fc")


@pytest.mark.parametrize("make", [MyResNet, in_place_resnet], ids=["mixin", "in_place"])
def test_outputs_in_train_equal_outputs_in_eval_for_a_frozen_resnet(make):
    torch.manual_seed(0)
    model = make(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4).freeze("body")
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x)
    before = snapshot(model)
    assert torch.equal(model.train()(x), expected)
    model.layer1.train()
    assert torch.equal(model(x), expected)
    assert not changed(before, model)


# -- B4: train_bn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_norm",
    [lambda: nn.BatchNorm2d(8), lambda: nn.GroupNorm(2, 8), lambda: nn.InstanceNorm2d(8, affine=True),
     lambda: timm.layers.LayerNorm2d(8), lambda: timm.layers.BatchNormAct2d(8)],
    ids=["BatchNorm2d", "GroupNorm", "InstanceNorm2d", "timm.LayerNorm2d", "timm.BatchNormAct2d"],
)
def test_train_bn_keeps_norm_layers_trainable(make_norm, images):
    net = Net()
    net.features[1] = make_norm()
    net.freeze("features", train_bn=True).train()
    norm = net.features[1]
    assert all(p.requires_grad for p in norm.parameters())
    assert not net.features[0].weight.requires_grad and norm.training and not net.features[3].training
    before = snapshot(norm)
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    train_steps(net, opt, images, steps=1)
    assert {"weight", "bias"} <= changed(before, norm)
    if isinstance(norm, nn.BatchNorm2d):
        assert "running_mean" in changed(before, norm)


def test_train_bn_is_a_freeze_like_any_other(net):
    net.freeze("features")
    net.freeze("features", train_bn=True)
    assert net.features[1].weight.requires_grad and net.features[1].training is net.training
    net.freeze("features")
    assert not net.features[1].weight.requires_grad and not net.features[1].training
    assert net.frozen_groups == ("features",)


def test_layernorm_and_rmsnorm_count_as_norms_for_train_bn():
    class Seq(fz.Freezable, nn.Sequential):
        freeze_groups = {"all": ["0", "1", "2"]}

    model = Seq(nn.Linear(4, 4), nn.LayerNorm(4), nn.RMSNorm(4)).freeze("all", train_bn=True)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, True]


# -- B5: everything else is plain PyTorch ---------------------------------------------------------


def test_unfreeze_restores_plain_behaviour_exactly(net, images):
    plain = copy.deepcopy(net)
    net.train().freeze().unfreeze().train()
    assert modes(net) == modes(plain.train())
    assert all(p.requires_grad for p in net.parameters())
    assert not any(is_frozen(m) or is_held(m) or m._forward_pre_hooks for m in net.modules())
    torch.manual_seed(5)
    a = net(images)
    torch.manual_seed(5)
    assert torch.equal(a, plain(images))
    assert net.freeze_state()["frozen_modules"] == []


def test_eval_still_puts_everything_in_eval(net):
    net.freeze("features").train()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert net.classifier.training and net.classifier[0].training and not net.features.training


# -- B6: checkpoints, deepcopy, save/load ----------------------------------------------------------


def in_place_alexnet(num_classes: int) -> torchvision.models.AlexNet:
    model = fz.freezable(torchvision.models.AlexNet(num_classes=num_classes))
    for name, spec in MyAlexNet.freeze_groups.items():
        if name not in model.freeze_group_names:
            model.register_freeze_group(name, spec)
    return model


@pytest.mark.parametrize("make", [MyAlexNet, in_place_alexnet], ids=["mixin", "in_place"])
def test_state_dict_is_that_of_the_plain_model(make):
    torch.manual_seed(0)
    mine = make(num_classes=10).freeze("features")
    plain = torchvision.models.AlexNet(num_classes=10)
    assert list(mine.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(mine.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), mine.state_dict().values()))
    torch.manual_seed(1)
    mine.load_state_dict(torchvision.models.AlexNet(num_classes=10).state_dict(), strict=True)
    assert "features" in mine.frozen_groups and "classifier" not in mine.frozen_groups


def test_freeze_state_survives_deepcopy_and_whole_module_save(net, images):
    net.freeze("features").train()
    buffer = io.BytesIO()
    torch.save(net, buffer)
    for other in (copy.deepcopy(net), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert other.freeze_state() == net.freeze_state()
        assert other.frozen_groups == ("features",)
        other.features.train()
        before = snapshot(other)
        other.train()(images)
        assert not changed(before, other) - {"classifier.1.weight", "classifier.1.bias"}
        assert not other.features[1].training


def test_freeze_state_round_trips_through_json(net):
    net.freeze().unfreeze("classifier")
    state = json.loads(json.dumps(net.freeze_state()))
    other = Net().load_freeze_state(state)
    assert other.freeze_state() == net.freeze_state()
    assert other.frozen_groups == ("features",)
    assert not other.train().features[1].training
    assert Net().load_freeze_state(Net().freeze_state()).frozen_groups == ()


# -- summary --------------------------------------------------------------------------------------


def test_freeze_summary_counts_groups_and_total():
    model = MyAlexNet(num_classes=10).freeze("features")
    text = model.freeze_summary()
    lines = text.splitlines()
    assert lines[0].split() == ["group", "params", "trainable", "frozen", "norms", "in", "eval"]
    assert lines[2].split()[:4] == ["features", "2.5M", "0", "2.5M"]
    assert lines[3].split()[:4] == ["classifier", "54.6M", "54.6M", "0"]
    assert lines[5].split()[0] == "total"
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert lines[6] == f"trainable: {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"


def test_summary_counts_norms_held_in_eval(net):
    assert net.freeze("features").freeze_summary().splitlines()[2].split()[-1] == "2"
    assert net.freeze("features", train_bn=True).freeze_summary().splitlines()[2].split()[-1] == "0"


def test_groups_on_the_meta_device_need_no_memory():
    with torch.device("meta"):
        model = MyAlexNet(num_classes=10)
    model.freeze("features")
    assert "54.6M" in model.freeze_summary()


# -- section 4: errors change nothing --------------------------------------------------------------


def test_class_level_group_errors_are_raised_at_first_use():
    class Bad(Net):
        freeze_groups = {"features": "featurez"}

    model = Bad()  # constructing does not resolve
    with pytest.raises(fz.FreezableError, match="'featurez'.*did you mean 'features'"):
        model.freeze("features")
    assert all(p.requires_grad for p in model.parameters())


def test_freezable_error_is_a_value_error():
    assert issubclass(fz.FreezableError, ValueError)


@pytest.mark.parametrize("mode", [True, False])
def test_unfreezing_a_wholly_frozen_model_returns_it_to_its_own_mode(mode):
    """The model itself was held, so its own flag read False (found writing tests/test_properties.py)."""
    model = Net().train(mode).freeze().unfreeze()
    assert all(m.training is mode for m in model.modules())
    assert all(m.training is True for m in Net().freeze().unfreeze().modules())


# -- norm_eval -------------------------------------------------------------------------------------------------------

_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in _RUNNING}


def test_norm_eval_holds_running_stats_while_affine_weights_train():
    torch.manual_seed(0)
    net = Net().set_norm_eval(True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before_stats, before_weights = _stats(net), snapshot(net)
    for train_call in (net.train, net.features.train, net.features[1].train, net.features[5].train):
        train_call()
        opt.zero_grad()
        net(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()
        assert not net.features[1].training and not net.features[5].training
    assert all(torch.equal(b, _stats(net)[n]) for n, b in before_stats.items())  # bit-identical, counter too
    moved = changed(before_weights, net)
    assert {"features.1.weight", "features.1.bias", "features.5.weight", "features.5.bias"} <= moved
    assert net.features[3].training and net.classifier[0].training  # dropout follows train() as before
    assert all(p.requires_grad for p in net.parameters())


def test_norm_eval_output_matches_the_layer_in_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    bn.running_mean.uniform_(), bn.running_var.uniform_(0.5, 2.0)
    net = type("Plain", (fz.Freezable, nn.Sequential), {})(copy.deepcopy(bn)).set_norm_eval(True).train()
    x = torch.randn(5, 4)
    assert torch.equal(net(x), bn.eval()(x))  # oracle: torch's own BatchNorm in eval


@pytest.mark.parametrize("make", [
    lambda: nn.BatchNorm2d(4),
    lambda: nn.LazyBatchNorm2d(),
    lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
    lambda: timm.layers.BatchNormAct2d(4),
], ids=["BatchNorm2d", "LazyBatchNorm2d", "InstanceNorm2d-tracking", "timm-BatchNormAct2d"])
def test_norm_eval_holds_every_norm_with_running_stats(make):
    net = type("Plain", (fz.Freezable, nn.Sequential), {})(nn.Conv2d(3, 4, 3), make(), nn.ReLU()).set_norm_eval(True)
    net(torch.randn(2, 3, 6, 6))  # materialises the lazy one (in eval: its statistics stay at their initial values)
    before = _stats(net)
    net.train()
    net[1].train()
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    assert not net[1].training and net[0].training
    assert all(torch.equal(b, _stats(net)[n]) for n, b in before.items())
    assert net[1].weight.grad is not None


def test_norm_eval_holds_sync_batch_norm_and_skips_norms_without_running_stats():
    net = type("Plain", (fz.Freezable, nn.Sequential), {})(
        nn.SyncBatchNorm(4), nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.InstanceNorm1d(4)).set_norm_eval(True).train()
    assert [m.training for m in net] == [False, True, True, True]
    assert net.freeze_state()["norm_eval_modules"] == ["0"]


def test_unfreeze_keeps_norm_eval_and_set_norm_eval_false_clears_it():
    net = Net().freeze().set_norm_eval(True, "features").unfreeze().train()
    assert not net.features[1].training and net.features[1].weight.requires_grad
    net.freeze("features").unfreeze("features").train()
    assert not net.features[1].training
    assert net.set_norm_eval(False).train().features[1].training
    assert modes(net) == modes(Net().train())  # nothing left held
    net.freeze("features").set_norm_eval(False, "features").train()  # frozen stays held without norm_eval
    assert not net.features[1].training


def test_norm_eval_on_named_groups_only():
    net = Net()
    net.register_freeze_group("first_bn", "features.1")
    net.set_norm_eval(True, "first_bn").train()
    assert (net.features[1].training, net.features[5].training) == (False, True)


def test_norm_eval_survives_deepcopy_pickle_and_torch_save():
    net = Net().set_norm_eval(True, "features")
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(net), torch.load(buffer, weights_only=False)):
        other.train()
        assert not other.features[1].training and not other.features[5].training and other.features[0].training
        assert other.freeze_state() == net.freeze_state()


def test_norm_eval_freeze_state_round_trip():
    net = Net().freeze("classifier").set_norm_eval(True, "features")
    state = net.freeze_state()
    assert state["version"] == 3 and state["norm_eval_modules"] == ["features.1", "features.5"]
    buffer = io.BytesIO()
    torch.save(json.loads(json.dumps(state)), buffer)
    buffer.seek(0)
    other = Net().load_freeze_state(torch.load(buffer, weights_only=True)).train()
    assert other.freeze_state() == state
    assert not other.features[1].training and other.features[1].weight.requires_grad
    assert net.load_freeze_state(Net().freeze_state()).train().features[1].training  # a v2 state clears it


def test_version_1_freeze_state_loads_and_leaves_norm_eval_as_it_is():
    old = {"format": "freezable.freeze_state", "version": 1, "frozen_modules": ["classifier", "classifier.0",
           "classifier.1"], "frozen_parameters": ["classifier.1.weight", "classifier.1.bias"]}
    net = Net().set_norm_eval(True).load_freeze_state(old).train()
    assert net.frozen_groups == ("classifier",)
    assert not net.features[1].training and net.features[0].training


def test_freeze_summary_counts_norm_eval_layers():
    text = Net().set_norm_eval(True).freeze_summary()
    assert text.splitlines()[2].split() == ["features", "840", "840", "0", "2"]  # 2 BatchNorms held, all trainable
    assert text.endswith("norm_eval: 2 norm layer(s) held in eval, statistics fixed (2 with trainable affine "
                         "parameters)")
    assert "norm_eval" not in Net().freeze_summary()


# -- lazy modules (issue 21) -----------------------------------------------------------------------------------------


class LazyNet(fz.Freezable, nn.Module):
    """Every layer lazy: nothing is materialised before the first forward."""

    freeze_groups = {"body": "body", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Flatten())
        self.head = nn.LazyLinear(2)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("form", ["mixin", "wrapper", "in_place"])
def test_lazy_modules_frozen_before_their_first_forward_are_frozen_once_materialised(form):
    torch.manual_seed(0)
    model = {
        "mixin": lambda: LazyNet().freeze("body"),
        "wrapper": lambda: fz.FrozenBackbone(LazyNet(), trainable=["head"]),
        "in_place": lambda: fz.freeze(nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(),
                                                    nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(2)),
                                      trainable=["5"]),
    }[form]()
    root = model.backbone if form == "wrapper" else model
    frozen = root[:5] if form == "in_place" else root.body
    head = root[5] if form == "in_place" else root.head
    assert "not materialised" in model.freeze_summary()  # readable before the first forward
    x = torch.randn(6, 3, 6, 6) * 3 + 1
    model.train()(x)  # materialises every lazy module, in training mode
    bn = frozen[1]
    assert type(bn) is nn.BatchNorm2d and is_held(bn) and not bn.training
    assert [p.requires_grad for p in frozen.parameters()] == [False] * 4
    assert all(p.requires_grad for p in head.parameters())
    # held from the first forward on: the statistics are the initial ones, not the first batch's
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert bn.num_batches_tracked == 0
    before = snapshot(frozen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    train_steps(model, opt, x)
    assert not changed(before, frozen)
    assert torch.equal(model.train()(x), model.eval()(x))
    assert "not materialised" not in model.freeze_summary()


def test_a_guard_on_lazy_parameters_is_refused_before_anything_changes():
    model = LazyNet()
    with pytest.raises(fz.FreezableError, match=r"guard=True.*not materialised.*'body.0.weight'.*run one forward first"):
        model.freeze("body", guard=True)
    assert model.freeze_state()["frozen_modules"] == [] and not any(is_held(m) for m in model.modules())


# -- SWA: torch.optim.swa_utils.update_bn (issue 21) ------------------------------------------------------------------


def test_update_bn_of_swa_leaves_frozen_statistics_as_they_were(net, images):
    from torch.optim.swa_utils import AveragedModel, update_bn

    torch.manual_seed(0)
    with torch.no_grad():  # statistics far from a reset's 0 and 1
        for bn in (net.features[1], net.features[5]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.num_batches_tracked.fill_(7)
    net.freeze("features", guard=True)
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    swa = AveragedModel(net)
    for _ in range(2):
        train_steps(net, opt, images, steps=1)
        swa.update_parameters(net)
    frozen = snapshot(swa.module.features)
    loader = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    update_bn(loader, swa)
    assert not changed(frozen, swa.module.features)  # not reset to 0 and 1
    assert fz.check(swa.module).ok
    with torch.no_grad():
        assert torch.equal(swa.module.eval().features(images), net.eval().features(images))
    swa.module.unfreeze()  # a BatchNorm that is not held is reset and recomputed, as in plain PyTorch
    update_bn(loader, swa)
    assert swa.module.features[1].num_batches_tracked == 3 and changed(frozen, swa.module.features)


# -- the summary: frozen outside freezable (issue 21) ----------------------------------------------------------------


def _row(summary: str, name: str) -> dict[str, str]:
    """A summary row by column, read from the table's header (columns are separated by two spaces or more)."""
    lines = summary.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    row = next(line for line in lines if line.split()[:1] == [name])
    return dict(zip(header, re.split(r"\s{2,}", row.strip())))


def test_summary_shows_parameters_frozen_by_hand_apart_with_their_norms_not_held(net, images):
    net.freeze("classifier")
    net.features.requires_grad_(False)  # by hand, after freezable changed something: nothing is held
    summary = net.freeze_summary()
    features = _row(summary, "features")
    assert features == {"group": "features", "params": "840", "trainable": "0", "frozen": "0", "norms in eval": "0",
                        "frozen by hand": "840", "norms not held": "2"}
    assert _row(summary, "classifier") == {**{k: "0" for k in features}, "group": "classifier", "params": "27",
                                            "frozen": "27"}
    assert _row(summary, "total")["frozen by hand"] == "840" and _row(summary, "total")["norms not held"] == "2"
    assert "built frozen" not in summary
    stats = snapshot(net.features)
    net.train()(images)  # what the column warns of: their statistics update in train()
    assert {"1.running_mean", "5.running_var"} <= changed(stats, net.features)
    held = net.freeze("features").freeze_summary()  # frozen through freezable: held, the columns go
    assert "frozen by hand" not in held and "norms not held" not in held and _row(held, "features")["frozen"] == "840"


def test_summary_shows_built_frozen_parameters_in_their_own_column():
    net = Net()
    net.features[1].requires_grad_(False)  # before freezable changed anything: built frozen
    summary = net.freeze("classifier").freeze_summary()
    assert _row(summary, "features") == {"group": "features", "params": "840", "trainable": "824", "frozen": "0",
                                         "norms in eval": "0", "built frozen": "16", "norms not held": "1"}
    assert "frozen by hand" not in summary


# -- the registered groups: one read-only map, one registration step --------------------------------------------

def test_freeze_group_map_is_a_read_only_view_in_group_order(net):
    groups = net.freeze_group_map
    assert list(groups) == list(net.freeze_group_names) == ["features", "classifier"]
    assert all(groups[name] == net.freeze_group(name) for name in groups)
    with pytest.raises(TypeError):
        groups["head"] = groups["classifier"]
    net.register_freeze_group("conv1", "features.0")
    assert list(groups) == ["features", "classifier", "conv1"]  # the view follows later registrations


def test_freeze_group_map_does_not_collide_with_a_model_s_own_attributes():
    """The in-place form attaches to any model: nn.Conv2d has ``groups``, so the map is named otherwise."""
    conv = fz.freezable(nn.Conv2d(4, 4, 3, groups=2))
    assert conv.groups == 2 and conv(torch.randn(1, 4, 5, 5)).shape == (1, 4, 3, 3)
    for cls in (nn.Conv2d, torchvision.models.ResNet, timm.models.VisionTransformer):
        assert not hasattr(cls, "freeze_group_map")


def test_every_registration_ends_in_one_step():
    """``_state.store_groups`` is called in one place, the mixin's registration step; read with ``ast``."""
    import ast
    from pathlib import Path

    package = Path(fz.__file__).parent
    calls = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "store_groups":
                calls.append(path.relative_to(package).as_posix())
    assert calls == ["mixin.py"]


def test_class_level_groups_register_whole_or_not_at_all():
    class Bad(fz.Freezable, nn.Sequential):
        freeze_groups = {"first": "0", "second": "nope"}

    model = Bad(nn.Linear(2, 2))
    with pytest.raises(fz.SpecError, match="spec 'nope' of group 'second'"):
        model.freeze("first")
    assert "_freezable_groups" not in model.__dict__
    assert all(p.requires_grad for p in model.parameters())


def test_a_preset_resolves_each_spec_once():
    """The route of a preset: each spec is tried once per candidate name, fitting or not."""
    seen: list[str] = []

    def spy(name, obj):
        seen.append(name)
        return name == "fc"

    preset = fz.Preset("test.spy", "a spy", {"stem": "conv1", "head": spy, "extra": ["nope", spy]}, frozen=("stem",))
    model = torchvision.models.resnet18()
    fz.FrozenBackbone(model, preset=preset)
    candidates = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    assert sorted(seen) == sorted(candidates * 2)  # two groups hold the spy: once each


# -- freeze() reads names as trainable= does --------------------------------------------------------------------

def test_freeze_takes_module_names_and_globs_as_trainable_does():
    fb = fz.FrozenBackbone(torchvision.models.resnet18(), trainable=["layer4", "fc.*"])
    trainable = {n for n, _ in fb.named_trainable_parameters()}
    fb.unfreeze().freeze().unfreeze("layer4", "fc.*")
    assert {n for n, _ in fb.named_trainable_parameters()} == trainable
    fb.freeze("layer4.1")
    assert not any(p.requires_grad for p in fb.backbone.layer4[1].parameters())
    assert all(p.requires_grad for p in fb.backbone.layer4[0].parameters())
    assert fb.train().backbone.layer4[1].bn1.training is False  # frozen as a group is: held at inference


def test_a_group_name_comes_before_a_module_of_that_name():
    class Crossed(fz.Freezable, nn.Sequential):
        freeze_groups = {"first": "1"}  # a group named like nothing, pointing at module "1"

    model = Crossed(nn.Linear(2, 2), nn.Linear(2, 2))
    model.register_freeze_group("0", "1")  # the group "0" holds module "1"
    model.freeze("0")
    assert model[0].weight.requires_grad and not model[1].weight.requires_grad


def test_an_unknown_name_gets_the_same_words_from_freeze_and_trainable():
    model = torchvision.models.resnet18()
    with pytest.raises(fz.UnknownNameError) as from_trainable:
        fz.FrozenBackbone(model, trainable=["layer_2"])
    with pytest.raises(fz.UnknownNameError) as from_freeze:
        fz.FrozenBackbone(model).freeze("layer_2")
    assert str(from_trainable.value).removeprefix("trainable") == str(from_freeze.value).removeprefix("freeze()")
    assert "did you mean 'layer2'" in str(from_freeze.value)
    assert isinstance(from_freeze.value, fz.UnknownGroupError) and isinstance(from_freeze.value, fz.SpecError)


def test_unknown_names_list_the_groups_in_group_order():
    with pytest.raises(fz.UnknownNameError, match=r"groups: \['stem', 'stage1', 'stage2', 'stage3', 'stage4', "
                                                  r"'block1'.*'block8', 'head', 'backbone'\]$"):
        fz.FrozenBackbone(torchvision.models.resnet18()).unfreeze("zzz")


# -- temporary freezing: frozen() and unfrozen() ----------------------------------------------------------------

def _everything(model: nn.Module) -> tuple:
    """The freeze state and all beside it that frozen()/unfrozen() put back, with the modes after train()."""
    from freezable import guard

    model.train()
    return full_state(model), model.freeze_summary(blocks=True), guard.guarded_names(model), fz.check(model).problems


def _prepared(model: fz.Freezable) -> fz.Freezable:
    """A model with something of every kind of state: a group frozen with a guard, norm_eval, built frozen."""
    groups = model.freeze_group_names
    model.freeze(groups[0], guard=True)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model.set_norm_eval(True)
    return model


FORMS = {
    "mixin": lambda: Net(),
    "in_place": lambda: (lambda m: m.register_freeze_group("features", "features")
                         .register_freeze_group("classifier", "classifier"))(fz.freezable(_built_frozen_net())),
    "wrapper": lambda: fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3), trainable=["stage4", "head"]),
}


def _built_frozen_net() -> nn.Module:
    from conftest import PlainNet

    model = PlainNet()
    model.classifier[1].bias.requires_grad_(False)  # built frozen
    return model


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize("how", ["frozen", "unfrozen"])
def test_temporary_freezing_restores_the_exact_state(form, how):
    model = _prepared(form())
    before = _everything(model)
    groups = model.freeze_group_names[-1:] if how == "frozen" else model.freeze_group_names[:1]
    with getattr(model, how)(*groups) as inside:
        assert inside is model
        changed_state = _everything(model)
    assert changed_state != before
    assert _everything(model) == before


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_temporary_freezing_restores_when_the_block_raises(form):
    model = _prepared(form())
    before = _everything(model)
    with pytest.raises(RuntimeError, match="boom"):
        with model.unfrozen():
            assert not model.frozen_groups
            raise RuntimeError("boom")
    assert _everything(model) == before


def test_temporary_freezing_nests(net):
    net.freeze("features")
    before = _everything(net)
    with net.unfrozen():
        assert net.frozen_groups == ()
        with net.frozen("classifier"):
            assert net.frozen_groups == ("classifier",)
            with net.unfrozen("classifier"), net.frozen("features"):
                assert net.frozen_groups == ("features",)
            assert net.frozen_groups == ("classifier",)
        assert net.frozen_groups == ()
    assert _everything(net) == before


def test_temporary_freezing_takes_module_names_and_rejects_bad_ones_before_changing(net):
    with net.frozen("features.0"):
        assert not net.features[0].weight.requires_grad and net.features[4].weight.requires_grad
    before = _everything(net)
    with pytest.raises(fz.UnknownNameError, match="frozen\\(\\) entry 'featurs'"):
        with net.frozen("featurs"):
            pass
    assert _everything(net) == before


def test_an_optimizer_step_inside_frozen_moves_nothing_frozen(net, images):
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    train_steps(net, opt, images)  # momentum and moments for every parameter
    before = snapshot(net)
    with net.frozen("features"):
        train_steps(net, opt, images)
    assert changed(before, net) == {"classifier.1.weight", "classifier.1.bias"}


def test_frozen_is_no_no_grad():
    """A loss through a part frozen for the block still trains what comes before it (a GAN's generator step)."""
    front, back = nn.Linear(2, 2), nn.Linear(2, 1)
    model = fz.freezable(nn.Sequential(front, back))
    model.register_freeze_group("front", "0").register_freeze_group("back", "1")
    with model.frozen("back"):
        model(torch.randn(3, 2)).sum().backward()
    assert front.weight.grad is not None and back.weight.grad is None
    assert back.weight.requires_grad


def test_the_built_frozen_warning_points_at_the_caller_s_line():
    class Two(fz.Freezable, nn.Sequential):
        freeze_groups = {"body": "0", "head": "1"}

    model = Two(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].bias.requires_grad_(False)
    model.freeze()
    with pytest.warns(fz.BuiltFrozenWarning, match=r"unfreeze\('body'\)") as record:
        model.unfreeze("body")
    with pytest.warns(fz.BuiltFrozenWarning, match=r"unfrozen\('body'\) .*model.unfrozen\('body', built_frozen=True\)"
                      ) as record_block:
        with model.unfrozen("body"):
            pass
    assert [w.filename for w in (*record, *record_block)] == [__file__, __file__]
