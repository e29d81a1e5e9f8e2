"""freezable.optim: optimizers that stay right while groups are (un)frozen, and B1 across every torch.optim optimizer.

Part 1, ``param_groups`` and ``unfreeze(optimizer=)``. Part 2 (from ``all_optimizers`` on): B1 across
every optimizer in torch.optim, frozen tensors stay bit-identical when freezing mid-training.

The optimizers are enumerated from ``torch.optim`` itself, so one added to torch is tested
without anyone adding it here. Each is run with every implementation it has (the default,
``foreach=True``, ``foreach=False``, ``fused=True`` where the CPU build supports it), with and
without weight decay and momentum where it takes them, and with ``zero_grad(set_to_none=False)``
as well as ``True``. The optimizer is built over *all* parameters and trained for two steps
(so momentum and ``exp_avg`` exist) before the features are frozen; three more steps must
leave every frozen parameter and buffer bit-identical and move the head.
``tests/test_mixin.py`` keeps a smaller matrix on a CNN.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import weakref
from typing import Any

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
    (("feature",), {"optimizer": "opt"}, fz.FreezableError, "unfreeze\\(\\) entry 'feature' is neither a group"),
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


# -- B1 across every optimizer in torch.optim ----------------------------------------------------


def all_optimizers() -> list[type[torch.optim.Optimizer]]:
    """Every optimizer class that torch.optim exports."""
    return sorted(
        {obj for name in dir(torch.optim) if isinstance(obj := getattr(torch.optim, name), type)
         and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer},
        key=lambda cls: cls.__name__,
    )


class Tiny(fz.Freezable, nn.Module):
    """Linear, BatchNorm1d and Dropout in the features; a linear head."""

    freeze_groups = {"features": "features", "head": "head"}

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.BatchNorm1d(6, affine=bias), nn.ReLU(),
                                      nn.Dropout(0.3))
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @staticmethod
    def batch() -> torch.Tensor:
        return torch.randn(8, 4)


class Sparse(fz.Freezable, nn.Module):
    """Two sparse embeddings, for SparseAdam (which takes sparse gradients only)."""

    freeze_groups = {"features": "features", "head": "head"}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Embedding(10, 4, sparse=True)
        self.head = nn.Embedding(10, 4, sparse=True)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.features(idx) * self.head(idx)

    @staticmethod
    def batch() -> torch.Tensor:
        return torch.randint(0, 10, (8,))


def make_model(cls: type[torch.optim.Optimizer]) -> nn.Module:
    if cls is torch.optim.SparseAdam:
        return Sparse()
    if cls.__name__ == "Muon":  # Muon takes 2-D parameters only
        return Tiny(bias=False)
    return Tiny()


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _fused_runs_on_cpu(cls: type[torch.optim.Optimizer]) -> bool:
    try:
        p = nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        cls([p], fused=True).step()
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def implementations(cls: type[torch.optim.Optimizer]) -> list[tuple[str, dict[str, Any]]]:
    """(id, kwargs) for every implementation of ``cls`` that runs here."""
    names = _parameters(cls)
    found: list[tuple[str, dict[str, Any]]] = [("default", {})]
    if "foreach" in names:
        found += [("foreach", {"foreach": True}), ("for-loop", {"foreach": False})]
    if "fused" in names and _fused_runs_on_cpu(cls):
        found.append(("fused", {"fused": True}))
    return found


SETTINGS = {"SGD": {"lr": 0.1}, "ASGD": {"lr": 0.1}, "Adadelta": {"lr": 1.0}, "Rprop": {"lr": 0.01},
            "Muon": {"lr": 0.05}, "LBFGS": {"lr": 0.5, "max_iter": 3, "history_size": 4}}


def cases() -> list[Any]:
    params = []
    for cls in all_optimizers():
        names = _parameters(cls)
        decays = [0.0, 0.1] if "weight_decay" in names else [0.0]
        momenta = [0.0, 0.9] if "momentum" in names else [None]
        for (impl, kwargs), decay, momentum, set_to_none in itertools.product(
                implementations(cls), decays, momenta, [True, False]):
            kw = {**SETTINGS.get(cls.__name__, {"lr": 0.05}), **kwargs}
            if "weight_decay" in names:
                kw["weight_decay"] = decay
            if momentum is not None:
                kw["momentum"] = momentum
            parts = [cls.__name__, impl] + (["wd"] if decay else []) + (["momentum"] if momentum else []) + (
                ["set_to_none"] if set_to_none else ["zero_grads"])
            params.append(pytest.param(cls, kw, set_to_none, id="-".join(parts)))
    return params


CASES = cases()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, set_to_none: bool) -> None:
    model.train()
    x = model.batch()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=set_to_none)
        loss = model(x).square().mean()
        loss.backward()
        return loss

    for _ in range(steps):
        if isinstance(opt, torch.optim.LBFGS):
            opt.step(closure)
        else:
            closure()
            opt.step()


def test_the_matrix_covers_every_torch_optimizer():
    covered = {case.values[0] for case in CASES}
    assert covered == set(all_optimizers()) and len(covered) >= 14
    assert len(CASES) >= 150


@pytest.mark.parametrize("cls, kwargs, set_to_none", CASES)
def test_frozen_tensors_stay_bit_identical_mid_training(cls, kwargs, set_to_none):
    model = make_model(cls)
    opt = cls(model.parameters(), **kwargs)  # over every parameter, before freezing
    train(model, opt, 2, set_to_none)
    assert opt.state or (cls is torch.optim.SGD and not kwargs["momentum"]), "the first steps build state"
    model.freeze("features")
    if isinstance(opt, torch.optim.LBFGS):  # its curvature history spans the frozen parameters: fz.check says
        assert any("build a new LBFGS after freezing" in p for p in fz.check(model, opt).problems)
        opt = cls(model.parameters(), **kwargs)  # frozen parameters may stay in it
    before = snapshot(model)
    train(model, opt, 3, set_to_none)
    moved = changed(before, model)
    assert not {name for name in moved if name.startswith("features.")}
    assert any(name.startswith("head.") for name in moved)


def test_lbfgs_without_history_over_frozen_parameters_is_fine():
    model = Tiny().freeze("features")
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    before = snapshot(model.features)
    train(model, opt, 3, set_to_none=False)
    assert not changed(before, model.features) and fz.check(model.eval(), opt).ok


# -- layer-wise learning-rate decay and no_weight_decay(), against timm's own param_groups_layer_decay ----------

TIMM_ARCHS = [
    "vit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "eva02_tiny_patch14_224",
    "swin_tiny_patch4_window7_224",
    "convnext_atto",
    "resnet18",
    "efficientnet_b0",
    "regnetx_002",
    "beit_base_patch16_224",
    "mobilenetv3_small_100",
]


def _timm_on_meta(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _timm_layers(model: nn.Module) -> fz.FrozenBackbone:
    """``model`` wrapped with the groups ``stem, block1 .. blockN, head`` of timm's fine group_matcher.

    timm numbers the layers 0 .. L (the stem first, a final norm with the last block, the parameters
    its matcher leaves out, the classifier, last); here layer 0 is ``stem``, L is ``head`` and the rest
    are the blocks, one group each, nothing frozen.
    """
    from timm.models import group_parameters

    layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values())
    names = ["stem", *(f"block{i}" for i in range(1, top)), "head"]
    groups = {name: (lambda n, _, i=i: layer_of.get(n) == i) for i, name in enumerate(names)}
    return fz.FrozenBackbone(model, preset=fz.Preset("test.timm_layers", "timm's fine layers", groups))


def _timm_reference(model: nn.Module, weight_decay: float, layer_decay: float) -> dict[int, tuple[float, float]]:
    """id(parameter) -> (lr scale, weight decay), by timm; every parameter must be trainable."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=model.no_weight_decay()
                                      if hasattr(model, "no_weight_decay") else (), layer_decay=layer_decay)
    return {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


def _ours(groups: list[dict], lr: float) -> dict[int, tuple[float, float]]:
    out = {id(p): (g["lr"] / lr, g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(out) == sum(len(g["params"]) for g in groups)  # every parameter once
    assert all(g["lr_scale"] == pytest.approx(g["lr"] / lr) for g in groups)
    return out


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_layer_decay_equals_timm_parameter_by_parameter(arch):
    model = _timm_on_meta(arch)
    expected = _timm_reference(model, 0.05, 0.75)
    fb = _timm_layers(model)
    fb.freeze(*fb.freeze_group_names[: len(fb.freeze_group_names) // 2])  # frozen ones stay in, at timm's rates
    got = _ours(fb.param_groups(2e-3, weight_decay=0.05, layer_decay=0.75), 2e-3)
    assert got.keys() == expected.keys() and len(got) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    wrong = {names[k]: (got[k], expected[k]) for k in got if got[k] != pytest.approx(expected[k], rel=1e-12)}
    assert not wrong
    assert len({s for s, _ in expected.values()}) > 3  # the check has teeth: many distinct rates


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_layer_decay_of_detected_groups_equals_timm(arch):
    model = _timm_on_meta(arch)
    expected = _timm_reference(model, 0.05, 0.75)
    got = _ours(fz.FrozenBackbone(model).param_groups(1.0, weight_decay=0.05, layer_decay=0.75), 1.0)
    assert got.keys() == expected.keys()
    names = {id(p): n for n, p in model.named_parameters()}
    wrong = {names[k]: (got[k], expected[k]) for k in got if got[k] != pytest.approx(expected[k], rel=1e-12)}
    assert not wrong


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224"])
def test_no_weight_decay_names_get_no_decay_without_layer_decay_too(arch):
    from timm.optim import param_groups_weight_decay

    model = _timm_on_meta(arch)
    expected = {id(p): g["weight_decay"] for g in param_groups_weight_decay(
        model, 0.05, no_weight_decay_list=model.no_weight_decay()) for p in g["params"]}
    groups = fz.FrozenBackbone(model).param_groups(1.0, weight_decay=0.05)
    assert {id(p): g["weight_decay"] for g in groups for p in g["params"]} == expected
    no_decay = {n for n, p in model.named_parameters() if expected[id(p)] == 0 and p.ndim > 1}
    assert {"pos_embed"} <= no_decay or any("relative_position_bias_table" in n for n in no_decay)


def test_layer_decay_and_lr_scale_multiply():
    fb = _timm_layers(_timm_on_meta("resnet18"))  # stem, block1 .. block8, head: layers 0 .. 9
    lrs = {g["name"]: g["lr"] for g in fb.param_groups(1.0, layer_decay=0.5, lr_scale={"block8": 3, "head": 0.1})}
    assert lrs["stem"] == pytest.approx(0.5**9) and lrs["block1"] == pytest.approx(0.5**8)
    assert lrs["block8"] == pytest.approx(3 * 0.5) and lrs["head"] == pytest.approx(0.1)
    assert lrs["stem.no_decay"] == lrs["stem"]


def test_layer_decay_without_blocks_ranks_the_stages():
    stages = {"stem": ["conv1", "bn1"], "stage1": "layer1", "stage2": "layer2", "stage3": "layer3",
              "stage4": "layer4", "head": "fc"}
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=4),
                           preset=fz.Preset("test.stages_only", "stages, no blocks", stages))
    scales = {g["name"]: g["lr_scale"] for g in fb.param_groups(1.0, layer_decay=0.5)}
    expected = {"stem": 0.5**5, "stage1": 0.5**4, "stage2": 0.5**3, "stage3": 0.5**2, "stage4": 0.5, "head": 1.0}
    assert scales == pytest.approx(expected | {f"{k}.no_decay": v for k, v in expected.items()})


def test_blocks_unfrozen_later_train_at_their_layer_rate():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    fb = _timm_layers(model)
    top = len(fb.freeze_group_names) - 1
    fb.freeze()
    opt = torch.optim.SGD(fb.param_groups(0.1, layer_decay=0.5), lr=0.1)  # no momentum: a step is -lr * grad
    fb.unfreeze("block1")
    before = {n: p.detach().clone() for n, p in fb.named_parameters()}
    opt.zero_grad()
    fb(torch.randn(2, 3, *model.pretrained_cfg["input_size"][1:])).square().mean().backward()
    opt.step()
    for name, p in fb.named_parameters():
        if p.grad is None:
            assert torch.equal(p, before[name]), name  # still frozen
        else:
            assert torch.allclose(p, before[name] - 0.1 * 0.5 ** (top - 1) * p.grad), name
    assert any(p.grad is not None for p in fb.parameters())


# -- release_optimizer_state: a frozen parameter keeps no optimizer state ---------------------------------------


RELEASABLE = [cls for cls in all_optimizers() if cls is not torch.optim.LBFGS]


def _state_tensors(opt: torch.optim.Optimizer, params) -> list[torch.Tensor]:
    return [t for p in params for t in opt.state.get(p, {}).values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("cls", RELEASABLE, ids=lambda cls: cls.__name__)
def test_releasing_drops_the_frozen_parameters_state_and_unfreezing_starts_it_afresh(cls):
    model = make_model(cls)
    kwargs = {**SETTINGS.get(cls.__name__, {"lr": 0.05}), **({"momentum": 0.9} if "momentum" in _parameters(cls) else {})}
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, 2, set_to_none=True)
    model.freeze("features")
    features, head = list(model.features.parameters()), list(model.head.parameters())
    dropped = _state_tensors(opt, features)
    assert dropped and any("optimizer state" in p for p in fz.check(model, opt).problems)
    head_state = {id(t) for t in _state_tensors(opt, head)}
    freed = fz.release_optimizer_state(opt, model)
    assert freed == sum(t.nbytes for t in {id(t): t for t in dropped}.values())
    assert not any(p in opt.state for p in features) and {id(t) for t in _state_tensors(opt, head)} == head_state
    assert fz.check(model, opt).ok
    opt.load_state_dict(opt.state_dict())  # still a valid optimizer for checkpoints
    train(model, opt, 1, set_to_none=True)  # frozen: no state comes back
    assert not any(p in opt.state for p in features)

    model.unfreeze("features")
    fresh = copy.deepcopy(model)  # the oracle: a new optimizer that never saw the features
    fresh_opt = cls(fresh.features.parameters(), **kwargs)
    for net, optimizer in ((model, opt), (fresh, fresh_opt)):
        torch.manual_seed(5)  # the same dropout draws
        train(net, optimizer, 1, set_to_none=True)
    assert not changed(snapshot(fresh.features), model.features)


def test_releasing_is_limited_to_the_model_given():
    a, b = Tiny(), Tiny()
    opt = torch.optim.AdamW([*a.parameters(), *b.parameters()], lr=0.1)
    for net in (a, b):
        train(net, opt, 1, set_to_none=True)
    a.freeze("features")
    b.freeze("features")
    fz.release_optimizer_state(opt, a)
    assert not any(p in opt.state for p in a.features.parameters())
    assert all(p in opt.state for p in b.features.parameters())  # another model's: left alone
    fz.release_optimizer_state(opt)  # no model: every frozen parameter the optimizer holds
    assert not any(p in opt.state for p in b.features.parameters())
    assert all(p in opt.state for p in [*a.head.parameters(), *b.head.parameters()])
    assert fz.release_optimizer_state(opt) == 0


def test_releasing_frees_the_memory():
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    train(model, opt, 1, set_to_none=True)
    model.freeze("features")
    ref = weakref.ref(opt.state[model.features[0].weight]["exp_avg"])
    fz.release_optimizer_state(opt, model)
    assert ref() is None  # nothing else holds it: the memory is back
