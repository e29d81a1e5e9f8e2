"""ProgressiveFreezing: both rules freeze the staged groups in forward order, frozen groups stay put and lose their
optimizer state, and a resumed run equals an uninterrupted one, on every kind of Freezable."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from conftest import changed, full_state, snapshot
from torch import nn

import freezable as fz
from freezable.errors import FreezeStateError
from freezable.schedule import staged_groups


class Chain(fz.Freezable, nn.Sequential):
    """Conv blocks with BatchNorm, declared in forward order, and a linear head."""

    freeze_groups = {"stem": "0", "block1": "1", "block2": "2", "head": "3"}

    def __init__(self) -> None:
        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

        super().__init__(block(3, 4), block(4, 4), block(4, 8),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))


def resnet(form: str) -> nn.Module:
    """A ResNet-18 (3 classes, everything trainable) as each kind of Freezable."""
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=3)
    if form == "in_place":
        return fz.freezable(plain)
    if form == "wrapper":
        return fz.FrozenBackbone(plain).unfreeze()
    raise ValueError(form)


def model_of(form: str) -> nn.Module:
    if form == "mixin":
        torch.manual_seed(0)
        return Chain()
    return resnet(form)


FORMS = ["mixin", "in_place", "wrapper"]


def data(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    x, y = data()
    batch = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:4]
    opt.zero_grad()
    nn.functional.cross_entropy(model.train()(x[batch]), y[batch]).backward()
    opt.step()


def forward_order(model: fz.Freezable, groups: tuple[str, ...]) -> list[str]:
    """The oracle: the groups in the order their modules first run in a forward on a real input."""
    root = model.backbone if isinstance(model, fz.FrozenBackbone) else model
    first: dict[str, int] = {}
    calls = [0]
    handles = []
    for name in groups:
        for module_name in model.freeze_group(name).modules:
            def hook(module, args, name=name):
                calls[0] += 1
                first.setdefault(name, calls[0])
            handles.append(root.get_submodule(module_name).register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(data(2)[0])
    for handle in handles:
        handle.remove()
    return sorted(first, key=first.get)


def staged_params(model: fz.Freezable, group: str) -> list[nn.Parameter]:
    root = model.backbone if isinstance(model, fz.FrozenBackbone) else model
    return [p for _, p in model.freeze_group(group).named_parameters(root)]


def group_tensors(model: fz.Freezable, group: str) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the group's modules, copied."""
    root = model.backbone if isinstance(model, fz.FrozenBackbone) else model
    return {f"{name}.{key}": tensor for name in model.freeze_group(group).modules
            for key, tensor in snapshot(root.get_submodule(name)).items()}


# -- forward order ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_the_schedule_rule_freezes_in_forward_order_only(form):
    model = model_of(form)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    freezing = fz.ProgressiveFreezing(model, "schedule", optimizer=opt, total_steps=12, start=0.25)
    order = forward_order(model, staged_groups(model))
    assert list(freezing.groups) == order[:len(freezing.groups)]  # the walk is forward order
    seen: list[str] = []
    for step in range(12):
        train_step(model, opt, step)
        frozen = freezing.step()
        seen += frozen
        assert seen == order[:len(seen)]  # only ever the next groups in forward order
        for i, group in enumerate(freezing.groups):  # frozen exactly up to there, the rest trains
            assert all(p.requires_grad == (i >= len(seen)) for p in staged_params(model, group)), (step, group)
    assert seen == list(freezing.groups)
    assert all(p.requires_grad for p in model.trainable_parameters())
    assert any(p.requires_grad for p in model.parameters())  # the head trains to the end
    assert fz.check(model, opt).ok


def test_the_gradient_rule_freezes_from_the_front_and_never_after_a_trainable_group():
    """Gradients set by hand, so the relative change of each group's norm is known exactly."""
    torch.manual_seed(0)
    model = Chain()
    freezing = fz.ProgressiveFreezing(model, "gradient", window=1, threshold=0.1, inference_prefix=False)

    def step(norms: dict[str, float]) -> list[str]:
        for group, norm in norms.items():  # every gradient of the group scaled so the group's norm is `norm`
            params = staged_params(model, group)
            grads = [torch.ones_like(p) for p in params]
            total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            for p, g in zip(params, grads):
                if p.requires_grad:
                    p.grad = g * (norm / total)
        return freezing.step()

    assert step({"stem": 1.0, "block1": 1.0, "block2": 1.0}) == []  # a first window: nothing to compare with
    # block1 and block2 changed by 5%, the stem by 30%: nothing freezes, not even the stable groups after the stem
    assert step({"stem": 1.3, "block1": 1.05, "block2": 1.05}) == []
    assert model.frozen_groups == ()
    # the stem settles (change 1/13 < 0.1), block1 too (2/105), block2 moves (40%): the stem and block1 freeze
    assert step({"stem": 1.4, "block1": 1.07, "block2": 1.47}) == ["stem", "block1"]
    assert model.frozen_groups == ("stem", "block1") and freezing.frozen_at == {"stem": 3, "block1": 3}
    assert step({"block2": 1.5}) == ["block2"]  # 3/147 < 0.1
    assert step({}) == []  # the head is never frozen (until defaults to all but the last group)
    assert [p.requires_grad for p in model[3].parameters()] == [True, True]


def test_the_gradient_rule_averages_over_its_window():
    torch.manual_seed(0)
    model = Chain()
    freezing = fz.ProgressiveFreezing(model, "gradient", window=2, threshold=0.1, inference_prefix=False)
    stem = staged_params(model, "stem")

    def step(norm: float) -> list[str]:
        for p in stem:
            p.grad = torch.full_like(p, 1.0)
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in stem])).item()
        for p in stem:
            p.grad *= norm / total
        for group in ("block1", "block2"):
            for p in staged_params(model, group):
                p.grad = None  # no gradient: no observation (and it never freezes past them)
        return freezing.step()

    assert [step(n) for n in (1.0, 3.0)] == [[], []]  # window mean 2.0
    # single steps move by 50% and more, the window means (2.0, then 2.1) by 5%: the stem freezes
    assert [step(n) for n in (1.2, 3.0)] == [[], ["stem"]]


# -- what freezing a group does -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_frozen_group_is_bit_identical_from_its_freeze_step_on_and_holds_no_optimizer_state(form):
    model = model_of(form)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    freezing = fz.ProgressiveFreezing(model, "schedule", optimizer=opt, total_steps=10, start=0.3)
    kept: dict[str, dict[str, torch.Tensor]] = {}
    state_bytes = []
    for step in range(10):
        train_step(model, opt, step)
        for group in freezing.step():
            kept[group] = group_tensors(model, group)  # weights and BatchNorm statistics at the freeze
            assert not any(p in opt.state for p in staged_params(model, group))
        state_bytes.append(sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t)))
        for group, tensors in kept.items():
            now = group_tensors(model, group)
            assert all(torch.equal(t, now[n]) for n, t in tensors.items()), (step, group)
    assert list(kept) == list(freezing.groups)
    assert state_bytes[-1] < state_bytes[0] and state_bytes == sorted(state_bytes, reverse=True)
    assert fz.check(model, opt).ok


def test_frozen_norm_layers_are_held_in_eval_through_train_calls():
    model = resnet("in_place")
    freezing = fz.ProgressiveFreezing(model, "schedule", total_steps=4, start=0.5, until="stem")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        train_step(model, opt, step)
        freezing.step()
    assert freezing.frozen_at == {"stem": 2}
    model.train()
    assert not model.bn1.training and model.layer1[0].bn1.training


def test_until_stops_the_walk_and_takes_an_umbrella():
    model = resnet("in_place")
    freezing = fz.ProgressiveFreezing(model, "schedule", total_steps=4, until="stage1")
    assert freezing.groups == ("stem", "block1", "block2")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(4):
        train_step(model, opt, step)
        freezing.step()
    assert model.frozen_groups[:4] == ("stem", "stage1", "block1", "block2") and "stage2" not in model.frozen_groups


def test_the_schedule_spaces_groups_as_freezeout():
    torch.manual_seed(0)

    class Five(fz.Freezable, nn.Sequential):
        freeze_groups = {"a": "0", "b": "1", "c": "2", "d": "3", "head": "4"}

    model = Five(*(nn.Linear(2, 2) for _ in range(5)))
    # t_i = start + (1 - start) * i / 4 for i = 0..3, cubed with "cubic"; the step is round(t_i * total_steps)
    linear = fz.ProgressiveFreezing(model, "schedule", total_steps=100, inference_prefix=False)
    assert linear.planned_steps == {"a": 50, "b": 62, "c": 75, "d": 88}  # 62.5 and 87.5 round to even
    cubic = fz.ProgressiveFreezing(model, "schedule", total_steps=100, start=0.8, spacing="cubic",
                                   inference_prefix=False)
    assert cubic.planned_steps == {"a": 51, "b": 61, "c": 73, "d": 86}  # 0.8**3, 0.85**3, 0.9**3, 0.95**3
    assert fz.ProgressiveFreezing(model, "gradient", inference_prefix=False).planned_steps == {}


def test_groups_frozen_before_it_started_are_skipped_and_the_walk_continues_after_them():
    model = resnet("in_place").freeze_to("block1")
    freezing = fz.ProgressiveFreezing(model, "schedule", total_steps=8, start=0.5, until="block4",
                                      inference_prefix=False)
    assert freezing.planned_steps == {"block2": 4, "block3": 5, "block4": 7}
    assert "next='block2' after step 4" in repr(freezing)


def test_guard_records_each_group_when_it_freezes():
    model = model_of("mixin")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    freezing = fz.ProgressiveFreezing(model, "schedule", optimizer=opt, total_steps=4, start=0.5, guard=True)
    for step in range(4):
        train_step(model, opt, step)
        freezing.step()
    assert fz.check(model, opt).ok
    with torch.no_grad():
        model[0][1].running_mean.add_(1.0)
    (problem,) = fz.check(model, opt).problems
    assert "'0.1.running_mean' changed since freeze(guard=True)" in problem


# -- resuming -----------------------------------------------------------------------------------------------


def setup(form: str, rule: str) -> tuple[dict, int, int]:
    """The rule's settings, the run's steps and the step to cut it at: groups freeze on both sides of the cut,
    which falls inside a gradient window."""
    if rule == "schedule":
        return {"total_steps": 10, "start": 0.3}, 10, 5
    return ({"window": 2, "threshold": 0.25}, 10, 5) if form == "mixin" else ({"window": 2, "threshold": 0.5}, 12, 11)


def _run(form: str, rule: str, steps: range, model=None, opt=None, freezing=None):
    if model is None:
        model = model_of(form)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
        freezing = fz.ProgressiveFreezing(model, rule, optimizer=opt, **setup(form, rule)[0])
    history = []
    for step in steps:
        train_step(model, opt, step)
        history.append((step, freezing.step()))
    return model, opt, freezing, history


@pytest.mark.parametrize("rule", ["schedule", "gradient"])
@pytest.mark.parametrize("form", FORMS)
def test_a_resumed_run_equals_an_uninterrupted_one(form, rule, tmp_path):
    settings, total, cut = setup(form, rule)
    straight, _, _, history = _run(form, rule, range(total))
    frozen_steps = [step for step, frozen in history if frozen]
    assert frozen_steps and min(frozen_steps) < cut <= max(frozen_steps)  # groups freeze before and after the cut

    first, opt, freezing, _ = _run(form, rule, range(cut))
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "freezing": freezing.state_dict()},
               tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    json.dumps(ckpt["freezing"])  # plain data
    assert rule == "schedule" or ckpt["freezing"]["gradient"]["counts"]  # inside a window: its sums go along
    resumed = model_of(form)  # a fresh model, everything trainable, another optimizer
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=0.01, weight_decay=0.05)
    freezing2 = fz.ProgressiveFreezing(resumed, rule, optimizer=opt2, **settings)
    resumed.load_state_dict(ckpt["model"])
    freezing2.load_state_dict(ckpt["freezing"])
    opt2.load_state_dict(ckpt["opt"])
    assert resumed.freeze_state() == first.freeze_state()
    _run(form, rule, range(cut, total), resumed, opt2, freezing2)
    assert snapshot(resumed).keys() == snapshot(straight).keys()
    assert not changed(snapshot(straight), resumed)  # every parameter and buffer, bit for bit
    assert resumed.freeze_state() == straight.freeze_state()


def test_load_state_dict_refuses_a_state_that_does_not_fit_and_changes_nothing():
    model = resnet("in_place")
    freezing = fz.ProgressiveFreezing(model, "gradient", window=2)
    good = freezing.state_dict()
    other = fz.ProgressiveFreezing(Chain(), "gradient", inference_prefix=False).state_dict()
    before = (full_state(model), freezing.state_dict())
    for bad, match in [
        ({"format": "x"}, "not a ProgressiveFreezing state of version 1"),
        (other, r"it walks the groups \['stem', 'block1', 'block2'\], the model \['stem', 'block1'"),
        ({**good, "rule": "gradual"}, "rule must be one of 'schedule', 'gradient'"),
        ({**good, "settings": {"window": 0, "threshold": 0.1}}, "window must be an int >= 1"),
        ({**good, "frozen_at": {"block1": 1}}, "frozen_at must map the groups after the first 0"),
        ({**good, "steps": -1}, "must be ints in range"),
        ({**good, "gradient": {"sums": {"stem": "1"}, "counts": {}, "previous": {}}}, "gradient sums must map"),
        ({**good, "freeze_state": {**good["freeze_state"], "frozen_modules": ["nope"]}}, "names 'nope'"),
    ]:
        with pytest.raises(FreezeStateError, match=match):
            freezing.load_state_dict(bad)
        assert (full_state(model), freezing.state_dict()) == before


def test_the_state_keeps_the_rule_and_settings_of_the_run_it_came_from():
    model = resnet("in_place")
    saved = fz.ProgressiveFreezing(model, "schedule", total_steps=20, start=0.5, spacing="cubic",
                                   inference_prefix=False).state_dict()
    other = fz.ProgressiveFreezing(resnet("in_place"), "gradient", inference_prefix=False)
    other.load_state_dict(saved)
    assert (other.rule, other.settings) == ("schedule", {"total_steps": 20, "start": 0.5, "spacing": "cubic"})
    assert copy.deepcopy(other.state_dict()) == saved
