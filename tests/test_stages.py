"""The staged walk and how a reader names a frozen set: freezable/stages.py."""

from __future__ import annotations

import pytest
import torchvision
from torch import nn

import freezable as fz
from freezable.groups import Group
from freezable.stages import Members, group_members, outline, staged_names, walk_units


@pytest.fixture
def model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2)),
                          nn.Linear(2, 1))
    model.token = nn.Parameter(nn.init.zeros_(nn.Linear(1, 2).weight))
    return model


def test_members_are_modules_and_parameters_kept_apart(model):
    members = group_members(model, Group(("1.0",), ("token",)))
    assert members == Members(frozenset({"1.0"}), frozenset({"1.0.weight", "1.0.bias", "token"}))
    assert Members(frozenset({"1.0"})) <= members and not members <= Members(frozenset({"1.0"}))


def test_walk_units_give_an_umbrella_s_rest_to_its_last_staged_group(model):
    groups = {"stem": Group(("0",), ("token",)), "block1": Group(("1.0",)), "block2": Group(("1.1",)),
              "stage1": Group(("1",)), "head": Group(("2",)), "backbone": Group(("0", "1"), ("token",))}
    assert staged_names(model, groups) == ("stem", "block1", "block2", "head")
    units = dict(walk_units(model, groups))
    assert units["block2"][0] == groups["block2"]  # with the stage's norm, outside its blocks (from each umbrella)
    assert set(units["block2"][1:]) == {Group(("1.2",))}
    assert units["stem"] == [groups["stem"]] and units["head"] == [groups["head"]]


def test_an_umbrella_over_the_whole_model_gives_no_unit_the_root():
    """The root module holds every staged group: it is never a unit's member (one containment rule, see is_within)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = {"a": Group(("0",)), "b": Group(("1",)), "all": Group(("",))}
    assert walk_units(net, groups) == [("a", [Group(("0",))]), ("b", [Group(("1",))])]


@pytest.fixture
def resnet() -> fz.FrozenBackbone:
    return fz.FrozenBackbone(torchvision.models.resnet18(num_classes=3))


def test_outline_names_stages_not_their_blocks_nor_the_backbone(resnet):
    assert outline(resnet.backbone, resnet.freeze_group_map, resnet.frozen_groups) == [
        "stem", "stage1", "stage2", "stage3", "stage4", "head"]


def test_outline_names_the_blocks_of_a_stage_partly_frozen(resnet):
    resnet.freeze_to("block5")  # stage3 is block5 and block6
    assert outline(resnet.backbone, resnet.freeze_group_map, resnet.frozen_groups) == [
        "stem", "stage1", "stage2", "block5"]
    assert repr(resnet).startswith("FrozenBackbone(ResNet, frozen=['stem', 'stage1', 'stage2', 'block5'], ")


def test_outline_names_a_part_whole_or_its_stages():
    groups = {"a.stem": Group(("0",)), "a.stage1": Group(("1",)), "a.block1": Group(("1.0",)),
              "a.block2": Group(("1.1",)), "a": Group(("0", "1")), "b.block1": Group(("2",)), "b": Group(("2",))}
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 2))
    assert outline(net, groups, ["a.stem", "a.stage1", "a.block1", "a.block2", "a", "b.block1", "b"]) == ["a", "b"]
    assert outline(net, groups, ["a.stem", "a.block1", "b.block1", "b"]) == ["a.stem", "a.block1", "b"]


def test_outline_shows_one_of_two_equal_groups():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    groups = {"features": Group(("0",)), "pool": Group(("1",)), "head": Group(("2",)), "backbone": Group(("0", "1"))}
    assert outline(net, groups, ["features", "backbone"]) == ["features"]  # backbone: features and a ReLU
