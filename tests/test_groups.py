"""Spec resolution: freezable/groups.py."""

from __future__ import annotations

import re

import pytest
from torch import nn

import freezable as fz
from freezable.groups import Group, is_within, resolve_group, resolve_groups, select, top_most


@pytest.fixture
def model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 1))
    model.token = nn.Parameter(nn.init.zeros_(nn.Linear(1, 2).weight))
    return model


def test_dotted_names_match_exactly(model):
    assert resolve_group(model, "g", "1") == Group(modules=("1",))
    assert resolve_group(model, "g", "1.1") == Group(modules=("1.1",))


def test_matches_reduce_to_top_most_modules(model):
    assert resolve_group(model, "g", ["1", "1.0", "1.0.weight"]) == Group(modules=("1",))
    assert resolve_group(model, "g", re.compile(r"1")) == Group(modules=("1",))


def test_globs_match_modules_and_parameters(model):
    assert resolve_group(model, "g", "[02]") == Group(modules=("0", "2"))
    assert resolve_group(model, "g", "*.bias") == Group(parameters=("0.bias", "1.0.bias", "1.1.bias", "2.bias"),
                                                        modules=())


def test_parameters_no_module_brings_belong_on_their_own(model):
    group = resolve_group(model, "g", ["token", "2"])
    assert group == Group(modules=("2",), parameters=("token",))
    assert [n for n, _ in group.named_parameters(model)] == ["2.weight", "2.bias", "token"]


def test_callables_see_modules_and_parameters(model):
    seen = []
    resolve_group(model, "g", lambda name, obj: seen.append((name, type(obj).__name__)) or False
                  if name != "0" else True)
    assert ("1.1", "BatchNorm1d") in seen and ("token", "Parameter") in seen


def test_named_modules_walk_each_subtree(model):
    group = resolve_group(model, "g", "1")
    assert [n for n, _ in group.named_modules(model)] == ["1", "1.0", "1.1"]


def test_a_group_whose_module_was_removed_says_so(model):
    group = resolve_group(model, "g", "1.1")
    model[1] = nn.Identity()
    with pytest.raises(fz.FreezableError, match="no module '1.1' any more"):
        list(group.named_modules(model))


@pytest.mark.parametrize(
    "specs, error, match",
    [
        ([], fz.FreezableError, "at least one spec"),
        ("", fz.FreezableError, "must not be empty"),
        ("   ", fz.FreezableError, "must not be empty"),
        (3, TypeError, "not int"),
        ([None], TypeError, "not NoneType"),
        (b"0", TypeError, "not bytes"),
        ("11", fz.FreezableError, r"spec '11' of group 'g' matches no submodule or parameter; did you mean '1.1' or '1'\?"),
        ("zz*", fz.FreezableError, "spec 'zz\\*'"),
    ],
)
def test_bad_specs(model, specs, error, match):
    with pytest.raises(error, match=match):
        resolve_group(model, "g", specs)


@pytest.mark.parametrize("name, ancestors, expected", [
    ("layer1.0.conv1", {"layer1"}, True),
    ("layer1", ["layer1"], True),
    ("layer10", ["layer1"], False),
    ("layer1", ["layer1.0"], False),
    ("fc", [""], True),  # the root holds every name
    ("", [""], True),
    ("", ["fc"], False),
    ("vision_model.block3", ("vision_model",), True),  # group names alike
])
def test_is_within_is_dotted_containment_with_the_root_holding_all(name, ancestors, expected):
    assert is_within(name, ancestors) is expected
    assert is_within(name, list(ancestors)) is is_within(name, set(ancestors))


def test_top_most_keeps_the_names_no_other_holds_in_their_order():
    assert top_most(["layer1.0", "layer1", "fc", "layer10.bn", "layer1.0.conv1"]) == ("layer1", "fc", "layer10.bn")
    assert top_most(["fc", ""]) == ("",)


def test_resolve_groups_leaves_out_optional_groups_that_match_nothing(model):
    resolved = resolve_groups(model, {"a": "0", "b": ["nope", "2"], "c": "nope"}, optional={"b", "c"})
    assert resolved == {"a": Group(("0",)), "b": Group(("2",))}
    with pytest.raises(fz.SpecError, match="spec 'nope' of group 'c' matches no"):
        resolve_groups(model, {"c": "nope"})


def test_select_takes_group_names_first_then_specs(model):
    groups = {"0": Group(("2",)), "body": Group(("1",))}
    assert select(model, groups, ["0", "body", "1.*.bias", "token"], "freeze()") == [
        Group(("2",)), Group(("1",)), Group((), ("1.0.bias", "1.1.bias")), Group((), ("token",))]
    with pytest.raises(fz.UnknownNameError, match=r"freeze\(\) entry 'bdy' is neither a group nor a submodule or "
                                                  r"parameter name of Sequential; did you mean the group 'body'\? "
                                                  r"groups: \['0', 'body'\]"):
        select(model, groups, ["body", "bdy"], "freeze()")
