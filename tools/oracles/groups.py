"""A group's parameters and a library attribute's parameters, compared by identity; groups that must split a model.

A shared module's parameters have two names, so parameters are compared by identity; ``shared_parameters`` names
those a model ties between modules, which the stage and part oracles leave out.
"""

from __future__ import annotations

from torch import nn

from freezable.detect._parts import compact
from freezable.groups import part_of, resolve_group

__all__ = ["Groups", "ids", "attr_ids", "staged", "parameter_names", "shared_parameters", "whole",
           "attribute_problems", "cover_problems", "parts"]

Groups = dict[str, tuple[str, ...]]


def ids(model: nn.Module, groups: Groups, name: str) -> set[int]:
    """The group's parameters, by identity; none if the group is absent."""
    if name not in groups:
        return set()
    return {id(p) for _, p in resolve_group(model, name, list(groups[name])).named_parameters(model)}


def attr_ids(model: nn.Module, *names: str) -> set[int]:
    """The parameters of the named submodules or parameters (``logit_scale``), by identity."""
    found: set[int] = set()
    for name in names:
        try:
            found |= {id(p) for p in model.get_submodule(name).parameters()}
        except AttributeError:
            found.add(id(model.get_parameter(name)))
    return found


def staged(groups: Groups, prefix: str) -> list[str]:
    """``prefix1 .. prefixN`` among the groups (``stage``, ``block``), in group order."""
    return [g for g in groups if g.startswith(prefix) and g[len(prefix):].isdigit()]


def parameter_names(model: nn.Module, groups: Groups, name: str) -> list[str]:
    """The group's parameter names, in the model's order; none if the group is absent."""
    if name not in groups:
        return []
    return [n for n, _ in resolve_group(model, name, list(groups[name])).named_parameters(model)]


def shared_parameters(model: nn.Module) -> set[int]:
    """The parameters a model holds under more than one name (CoaT's shared modules, tied embeddings), by identity."""
    seen: set[int] = set()
    shared: set[int] = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (shared if id(p) in seen else seen).add(id(p))
    return shared


def whole(model: nn.Module) -> tuple[str, ...]:
    """Names that together hold every parameter of ``model`` (its top-most modules): a ``backbone`` of all of it."""
    return compact(model, [n for n, _ in model.named_parameters()])


def attribute_problems(model: nn.Module, groups: Groups, expected: dict[str, list[str]]) -> list[str]:
    """Each group holds exactly the parameters of the submodules the library names for it (group -> attribute
    paths); a group whose attributes hold no parameter must be absent."""
    problems = []
    for group, names in expected.items():
        want = attr_ids(model, *names)
        got = ids(model, groups, group)
        if got != want:
            problems.append(f"{group} holds {len(got)} parameters, {' + '.join(names) or 'nothing'} {len(want)}"
                            if len(got) != len(want) else f"{group} is not {' + '.join(names)}")
    return problems


def cover_problems(model: nn.Module, groups: Groups, names: list[str]) -> list[str]:
    """The named groups split the model's parameters: no overlap, nothing left out."""
    parts = [ids(model, groups, n) for n in names if n in groups]
    every = {id(p) for p in model.parameters()}
    problems = []
    if sum(map(len, parts)) != len(set().union(*parts)):
        problems.append(f"{names} overlap")
    if set().union(*parts) != every:
        problems.append(f"{names} leave {len(every - set().union(*parts))} parameters out")
    return problems


def parts(groups: Groups) -> list[str]:
    """The parts named in ``groups`` (``vision_model`` of ``vision_model.block3``), in group order."""
    return list(dict.fromkeys(part_of(g)[0] for g in groups if part_of(g)[0]))
