"""UnfreezeSchedule and freeze_to: gradual unfreezing over the staged groups."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import full_state
from torch import nn

import freezable as fz
from freezable.schedule import staged_groups


@pytest.fixture
def fb() -> fz.FrozenBackbone:
    torch.manual_seed(0)
    return fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3), trainable=["head"])


MILESTONES = {1: ["stage4"], 3: ["stage3", "stage2"], 5: "stem"}
STAGED = ("stem", "stage1", "stage2", "stage3", "stage4", "head")


def coarse(groups: tuple[str, ...]) -> tuple[str, ...]:
    """The groups without the blocks (the stages hold them)."""
    return tuple(g for g in groups if not g.startswith("block"))


def test_staged_groups_skip_umbrellas(fb):
    # the stages hold resnet18's eight basic blocks, so they are umbrellas too
    assert staged_groups(fb) == ("stem",) + tuple(f"block{i}" for i in range(1, 9)) + ("head",)


@pytest.mark.parametrize("epoch", [0, 1, 2, 3, 4, 5, 9])
def test_step_sets_the_state_of_its_epoch_whatever_came_before(fb, epoch):
    expected = {0: 5, 1: 4, 2: 4, 3: 2, 4: 2, 5: 1, 9: 1}[epoch]  # frozen staged groups
    fresh = fz.UnfreezeSchedule(fb, MILESTONES)
    initial = fb.freeze_state()
    fresh.step(epoch)  # a resume straight at `epoch`
    resumed = fb.freeze_state()
    assert len([g for g in fb.frozen_groups if g in STAGED]) == expected
    fb.load_freeze_state(initial)
    walked = fz.UnfreezeSchedule(fb, MILESTONES)
    for e in range(10):  # forwards then back: step is exact, not incremental
        walked.step(e)
    walked.step(epoch)
    assert fb.freeze_state() == resumed
    before = full_state(fb)
    walked.step(epoch)  # idempotent
    assert full_state(fb) == before


def test_step_keeps_the_initial_freeze_state_including_train_bn(fb):
    fb.freeze("stage1", train_bn=True)
    schedule = fz.UnfreezeSchedule(fb, {2: ["stage1"]})
    assert fb.backbone.layer1[0].bn1.weight.requires_grad and not fb.backbone.layer1[0].conv1.weight.requires_grad
    schedule.step(2)
    assert fb.backbone.layer1[0].conv1.weight.requires_grad
    schedule.step(0)
    assert fb.backbone.layer1[0].bn1.weight.requires_grad and not fb.backbone.layer1[0].conv1.weight.requires_grad
    assert fb.backbone.layer1[0].bn1.training == fb.training


def test_state_dict_round_trips_through_torch_save_weights_only(fb, tmp_path):
    schedule = fz.UnfreezeSchedule(fb, MILESTONES)
    schedule.step(3)
    torch.save({"schedule": schedule.state_dict(), "freeze": fb.freeze_state()}, tmp_path / "ckpt.pt")
    json.dumps(schedule.state_dict())  # plain data (int keys become strings in JSON, fine for torch.save)

    torch.manual_seed(0)
    other = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3))  # fully frozen: another initial state
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    other.load_freeze_state(ckpt["freeze"])
    resumed = fz.UnfreezeSchedule(other, {})
    resumed.load_state_dict(ckpt["schedule"])
    assert (resumed.milestones, resumed.last_epoch) == (schedule.milestones, 3)
    resumed.step(0)
    assert other.freeze_state() == schedule.initial_state  # head trainable as in the original initial state
    resumed.step(4)
    fb_state = fb.freeze_state()
    assert other.freeze_state() == fb_state


def test_step_adds_unfrozen_parameters_to_the_optimizer_once(fb):
    opt = torch.optim.SGD(fb.trainable_parameters(), lr=0.1, momentum=0.9)
    schedule = fz.UnfreezeSchedule(fb, MILESTONES, optimizer=opt, lr=0.01)
    schedule.step(0)
    assert len(opt.param_groups) == 1
    schedule.step(1)
    schedule.step(1)
    schedule.step(2)
    assert [g.get("name") for g in opt.param_groups] == [None, "unfrozen@1:stage4"]
    assert opt.param_groups[1]["lr"] == 0.01
    schedule.step(3)
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_opt) == len({id(p) for p in in_opt})
    assert {id(p) for p in fb.trainable_parameters()} == {id(p) for p in in_opt}


def test_optimizer_groups_depend_on_the_epoch_only_so_a_resumed_optimizer_loads(fb, tmp_path):
    initial = fb.freeze_state()
    opt = torch.optim.AdamW(fb.trainable_parameters(), lr=0.1)
    schedule = fz.UnfreezeSchedule(fb, MILESTONES, optimizer=opt)
    for epoch in range(4):
        schedule.step(epoch)
        opt.zero_grad()
        fb(torch.randn(2, 3, 32, 32)).sum().backward()
        opt.step()
    saved = {"opt": opt.state_dict(), "schedule": schedule.state_dict()}

    fb.load_freeze_state(initial)  # a fresh start: the initial state, an optimizer from trainable_parameters
    opt2 = torch.optim.AdamW(fb.trainable_parameters(), lr=0.1)
    resumed = fz.UnfreezeSchedule(fb, {})
    resumed.load_state_dict(saved["schedule"])
    resumed.step(resumed.last_epoch, optimizer=opt2)  # straight to epoch 3: groups as stepped one by one
    assert [g["name"] for g in opt2.param_groups[1:]] == ["unfrozen@1:stage4", "unfrozen@3:stage3,stage2"]
    opt2.load_state_dict(saved["opt"])


def test_freeze_to_freezes_up_to_and_including_the_group(fb):
    fb.freeze_to("stage2")
    assert coarse(fb.frozen_groups) == ("stem", "stage1", "stage2")
    fb.freeze()
    fb.freeze_to("stage3", train_bn=True)
    assert not fb.backbone.layer3[0].conv1.weight.requires_grad and fb.backbone.layer3[0].bn1.weight.requires_grad
    assert fb.backbone.fc.weight.requires_grad and fb.backbone.layer4[0].conv1.weight.requires_grad
    fb.freeze_to("head")
    assert not any(p.requires_grad for p in fb.parameters())


def test_schedule_optimizer_and_lr_are_checked(fb):
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, not list"):
        fz.UnfreezeSchedule(fb, {}, optimizer=[])
    with pytest.raises(fz.FreezableError, match="lr must be a finite number >= 0"):
        fz.UnfreezeSchedule(fb, {}, lr=-0.1)
    before = full_state(fb)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        fz.UnfreezeSchedule(fb, {0: "stage4"}).step(0, optimizer="sgd")
    assert full_state(fb) == before


def test_step_unfreezes_tied_parameters_whatever_name_they_go_by():
    class Tied(fz.Freezable, nn.Module):
        freeze_groups = {"embed": "embed", "out": "out"}

        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
            self.out.weight = self.embed.weight  # tied: named "embed.weight" in freeze_state

    model = Tied().freeze()
    fz.UnfreezeSchedule(model, {1: "out"}).step(1)
    assert model.out.weight.requires_grad and model.freeze_state()["frozen_parameters"] == []


def test_freeze_to_takes_block_and_stage_names(fb):
    fb.freeze_to("block3")  # resnet18: blocks 1-2 are layer1, block 3 is layer2.0
    frozen = {n for n, p in fb.backbone.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in fb.backbone.named_parameters() if n.startswith(("conv1", "bn1", "layer1", "layer2.0."))}
    assert frozen == expected
    fb.freeze_to("stage2")
    frozen = {n for n, p in fb.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in fb.backbone.named_parameters() if n.startswith(("conv1", "bn1", "layer1", "layer2"))}
    fb.freeze_to("backbone")  # an umbrella: everything up to its last staged group
    assert [n for n, p in fb.backbone.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_freeze_to_walks_a_final_norm_with_the_last_block():
    # timm convnext: head.norm (the pre-logits norm) is in stage4 but in no block (timm's layer decay puts
    # it with the head); the walk takes it with the last block of stage4
    import timm

    fb = fz.FrozenBackbone(timm.create_model("convnext_atto", num_classes=3))
    last = max(int(g[5:]) for g in fb.freeze_group_names if g.startswith("block"))
    fb.freeze_to(f"block{last}")
    assert not fb.backbone.head.norm.weight.requires_grad and fb.backbone.head.fc.weight.requires_grad
    fb.freeze_to(f"block{last - 1}")
    assert fb.backbone.head.norm.weight.requires_grad and not fb.backbone.stages[3].blocks[0].conv_dw.weight.requires_grad


def _meta_backbone(name: str) -> fz.FrozenBackbone:
    import timm

    with torch.device("meta"):
        return fz.FrozenBackbone(timm.create_model(name))


@pytest.mark.parametrize("name", ["convnext_atto", "swin_tiny_patch4_window7_224"])
def test_a_schedule_over_every_block_and_the_head_leaves_nothing_frozen(name):
    fb = _meta_backbone(name)
    blocks = [g for g in staged_groups(fb) if g.startswith("block")]
    assert len(blocks) == 12  # timm's layer ids: both have 2+2+6+2 blocks
    schedule = fz.UnfreezeSchedule(fb, {0: ["head"], **{i + 1: [b] for i, b in enumerate(reversed(blocks))}, 13: "stem"})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, device="meta"))], lr=0.1)
    schedule.step(13, optimizer=opt)
    assert [n for n, p in fb.backbone.named_parameters() if not p.requires_grad] == []
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in fb.backbone.parameters())


def test_a_schedule_unfreezes_the_final_norm_with_the_last_block_as_freeze_to_does():
    fb = _meta_backbone("convnext_atto")
    last = [g for g in staged_groups(fb) if g.startswith("block")][-1]
    norm = fb.backbone.head.norm  # timm convnext's pre-logits norm: in stage4, in no block
    fz.UnfreezeSchedule(fb, {1: [last]}).step(1)
    assert norm.weight.requires_grad and fb.backbone.stages[3].blocks[-1].conv_dw.weight.requires_grad
    assert not fb.backbone.stages[3].blocks[0].conv_dw.weight.requires_grad
    # the same cut as freeze_to(the block before it)
    expected = {n for n, p in fb.backbone.named_parameters() if p.requires_grad} | {"head.fc.weight", "head.fc.bias"}
    fb.freeze_to(staged_groups(fb)[-3])
    assert {n for n, p in fb.backbone.named_parameters() if p.requires_grad} == expected
    # unfreeze(group) is exact: a group is its members, as in freeze(group)
    fb.freeze().unfreeze(last)
    assert not norm.weight.requires_grad


def test_a_schedule_step_leaves_norm_eval_set_after_the_schedule_was_built():
    fb = fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3))
    schedule = fz.UnfreezeSchedule(fb, {1: ["stage4", "head"]})
    fb.set_norm_eval(True)
    schedule.step(1)
    assert fb.backbone.layer4[0].bn1.weight.requires_grad
    assert not fb.train().backbone.layer4[0].bn1.training  # still under norm_eval: the step did not undo it
    assert fb.freeze_state()["norm_eval_modules"]
