"""The staged walk over a model's groups: which groups are *staged*, what walks with each, how a reader
names a set of them.

*Staged* groups contain no other registered group (the blocks, where a model has them; the stem; the head);
*umbrellas* contain others (a stage over its blocks, ``backbone``, a part of a model of several parts).
``freeze_to``, :class:`~freezable.UnfreezeSchedule`, :class:`~freezable.ProgressiveFreezing` and
``param_groups`` walk the staged groups in group order (:func:`walk_units`); the wrapper's repr names a
frozen set at the level a reader expects (:func:`outline`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from .groups import Group, is_within, part_of, top_most

__all__ = ["Members", "group_members", "staged_names", "walk_units", "units_within", "outline"]


@dataclass(frozen=True)
class Members:
    """What a group covers on a model, compared as sets (``a <= b``: ``b`` covers all that ``a`` does).

    Example:
        >>> a, b = Members(frozenset({"0"}), frozenset({"0.weight"})), Members(frozenset({"0", "1"}))
        >>> (a - b).parameters, a <= b | a, bool(Members())
        (frozenset({'0.weight'}), True, False)
    """

    modules: frozenset[str] = frozenset()  # every module name, each listed module's subtree included
    parameters: frozenset[str] = frozenset()  # every parameter name

    def __le__(self, other: Members) -> bool:
        return self.modules <= other.modules and self.parameters <= other.parameters

    def __lt__(self, other: Members) -> bool:
        return self <= other and self != other

    def __or__(self, other: Members) -> Members:
        return Members(self.modules | other.modules, self.parameters | other.parameters)

    def __sub__(self, other: Members) -> Members:
        return Members(self.modules - other.modules, self.parameters - other.parameters)

    def __bool__(self) -> bool:
        return bool(self.modules or self.parameters)

    @staticmethod
    def union(members: Iterable[Members]) -> Members:
        found = Members()
        for m in members:
            found |= m
        return found


def group_members(root: nn.Module, group: Group) -> Members:
    """Every module name and every parameter name that ``group`` covers on ``root``."""
    return Members(frozenset(n for n, _ in group.named_modules(root)),
                   frozenset(n for n, _ in group.named_parameters(root)))


def staged_names(root: nn.Module, groups: Mapping[str, Group]) -> tuple[str, ...]:
    """The groups that contain no other group (the *staged* ones), in group order.

    Umbrella groups, such as ``backbone`` over the stem and stages, are left out; the
    walks in order (``freeze_to``, gradual unfreezing, ``param_groups``) use these.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
        >>> groups = {"a": Group(("0",)), "b": Group(("1",)), "body": Group(("0", "1")), "head": Group(("2",))}
        >>> staged_names(net, groups)
        ('a', 'b', 'head')
        >>> staged_names(net, {"stage1": Group(("0",)), "block1": Group(("0",))})  # a stage of one block
        ('block1',)
    """
    members = list((name, group_members(root, group)) for name, group in groups.items())
    # an umbrella holds another group: more than it, or exactly it where that group comes later (a stage of
    # one block: the stage is registered first and holds the block)
    return tuple(
        name for i, (name, own) in enumerate(members)
        if not any(other and (other < own or (other == own and j > i)) for j, (_, other) in enumerate(members) if j != i)
    )


def walk_units(root: nn.Module, groups: Mapping[str, Group]) -> list[tuple[str, list[Group]]]:
    """The staged groups in order, each with the parts of umbrellas that end with it.

    An umbrella's members that no staged group holds (a stage's final norm, outside its blocks) go
    with the umbrella's last staged group, so walking the staged groups covers the umbrellas too.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1))
        >>> groups = {"a": Group(("0",)), "b": Group(("1",)), "stage": Group(("0", "1", "2")), "head": Group(("3",))}
        >>> [(name, [g.modules for g in units]) for name, units in walk_units(net, groups)]
        [('a', [('0',)]), ('b', [('1',), ('2',)]), ('head', [('3',)])]
    """
    staged = staged_names(root, groups)
    members = {name: group_members(root, group) for name, group in groups.items()}
    units: dict[str, list[Group]] = {name: [groups[name]] for name in staged}
    held = Members.union(members[s] for s in staged)  # what some staged group holds
    around_held = {name[:i] for name in held.modules for i in _dots(name)} | held.modules | {""}
    for name, own in members.items():
        inside = [s for s in staged if members[s] and members[s] <= own]
        if name in staged or not inside:
            continue
        rest = own - held
        modules = top_most(m for m in sorted(rest.modules) if m not in around_held)  # none holding a staged one
        params = tuple(n for n in sorted(rest.parameters) if not is_within(n, modules))
        if modules or params:
            units[inside[-1]].append(Group(modules=modules, parameters=params))
    return list(units.items())


def _dots(name: str) -> list[int]:
    return [i for i, c in enumerate(name) if c == "."]


def units_within(root: nn.Module, groups: Mapping[str, Group], name: str,
                 units: list[tuple[str, list[Group]]] | None = None) -> list[int]:
    """Indices (into :func:`walk_units`) of the units whose staged group is ``name`` or lies inside it.

    ``name`` is a staged group (one unit) or an umbrella over staged groups (``stage4``:
    its blocks' units, the parts of umbrellas that end with them included).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1))
        >>> groups = {"a": Group(("0",)), "b": Group(("1",)), "stage": Group(("0", "1", "2")), "head": Group(("3",))}
        >>> units_within(net, groups, "stage"), units_within(net, groups, "b")
        ([0, 1], [1])
    """
    units = walk_units(root, groups) if units is None else units
    own = group_members(root, groups[name])
    return [i for i, (staged, _) in enumerate(units) if staged == name or group_members(root, groups[staged]) <= own]


def outline(root: nn.Module, groups: Mapping[str, Group], names: Collection[str]) -> list[str]:
    """The groups ``names`` (the frozen ones, say) as a reader names them, in group order.

    A part's umbrella stands for the part's groups (``text_model``, not its stages); a block shows only where
    its stage is not among ``names`` (a stage partly frozen); an umbrella whose parameters the groups shown
    inside it hold all of (``backbone`` over the stem and stages) is left out, as is a group equal to an
    earlier one.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
        >>> groups = {"stem": Group(("0",)), "stage1": Group(("1", "2")), "block1": Group(("1",)),
        ...           "block2": Group(("2",)), "head": Group(("3",)), "backbone": Group(("0", "1", "2"))}
        >>> outline(net, groups, ["stem", "stage1", "block1", "block2", "backbone"])
        ['stem', 'stage1']
        >>> outline(net, groups, ["stem", "block1"])  # stage1 partly frozen
        ['stem', 'block1']
    """
    chosen = list(top_most(n for n in groups if n in names))  # a group inside a part named goes with the part
    covers = {n: _weights(root, groups[n]) for n in chosen}
    stages = [n for n in chosen if part_of(n)[1] == "stage"]
    chosen = [n for n in chosen if part_of(n)[1] != "block" or not any(covers[n] <= covers[s] for s in stages)]
    order = {n: i for i, n in enumerate(chosen)}
    return [n for n in chosen if not covers[n] <= set().union(*(
        covers[o] for o in chosen if covers[o] < covers[n] or (covers[o] == covers[n] and order[o] < order[n])))]


def _weights(root: nn.Module, group: Group) -> set[str]:
    """What a group holds, for a reader: its parameters; a group without parameters: its modules."""
    members = group_members(root, group)
    return set(members.parameters) or {f"{m} (module)" for m in members.modules}
