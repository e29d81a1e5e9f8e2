"""Spec resolution: freezable/groups.py."""

from __future__ import annotations

import re

import pytest
from torch import nn

import freezable as fz
from freezable.groups import Group, resolve_group


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
