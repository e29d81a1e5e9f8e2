"""Freeze groups: specs that name parts of a model, resolved to exact names.

A spec is one of:

* a dotted name, ``"features"`` or ``"classifier.6"``, matched exactly;
* a glob, ``"layer[12]"`` or ``"blocks.*"`` (anything with ``*?[``), matched
  with :func:`fnmatch.fnmatchcase`;
* a compiled :class:`re.Pattern`, tried with ``pattern.match`` (timm's
  ``group_matcher`` convention);
* a callable ``(name, module_or_parameter) -> bool``.

Specs are tried against every submodule name and every parameter name. A group
resolves to the top-most matched submodules (each brings its whole subtree)
plus the matched parameters that none of them brings along, such as a ViT's
``cls_token``. Groups hold names only, so a model whose groups came from
lambdas still deep-copies and pickles.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from torch import nn

from .errors import FreezableError, SpecError, closest, type_error

__all__ = ["Spec", "Group", "resolve_group", "as_spec_list", "staged_names", "is_block", "is_within", "part_of",
           "enclosing_part"]

Spec = Union[str, "re.Pattern[str]", Callable[[str, Union[nn.Module, nn.Parameter]], bool]]

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Group:
    """A freeze group resolved to names relative to the model it belongs to."""

    # top-most matched submodules, in model order ("" is the model itself)
    modules: tuple[str, ...]
    # matched parameters that none of ``modules`` brings along, in model order
    parameters: tuple[str, ...] = ()

    def named_modules(self, root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """Every module of the group, each listed module's subtree included."""
        for name in self.modules:
            yield from _lookup(root, name, "module").named_modules(prefix=name)

    def named_parameters(self, root: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        """Every parameter of the group, once each."""
        seen: set[int] = set()
        for name in self.modules:
            for pname, param in _lookup(root, name, "module").named_parameters(prefix=name):
                if id(param) not in seen:
                    seen.add(id(param))
                    yield pname, param
        for pname in self.parameters:
            param = _lookup(root, pname, "parameter")
            if id(param) not in seen:
                seen.add(id(param))
                yield pname, param


def _lookup(root: nn.Module, name: str, kind: str):
    try:
        return root.get_submodule(name) if kind == "module" else root.get_parameter(name)
    except AttributeError:
        raise FreezableError(
            f"the model has no {kind} {name!r} any more; was it replaced after its group was registered?"
        ) from None


def as_spec_list(specs: object) -> list[Spec]:
    """Turns one spec or a sequence of specs into a list, checking each one's type."""
    if isinstance(specs, (str, re.Pattern)) or callable(specs):
        specs = [specs]
    elif not isinstance(specs, Sequence) or isinstance(specs, (bytes, bytearray)):
        raise type_error("a group spec", specs, "a name, a glob, a re.Pattern, a callable or a list of them")
    specs = list(specs)
    if not specs:
        raise SpecError("a group needs at least one spec, got an empty list")
    for spec in specs:
        if isinstance(spec, str):
            if not spec.strip():
                raise SpecError(f"a group spec must not be empty or blank, got {spec!r}")
        elif not isinstance(spec, re.Pattern) and not callable(spec):
            raise type_error("a group spec", spec, "a name, a glob, a re.Pattern or a callable")
    return specs


def _matcher(spec: Spec) -> Callable[[str, object], bool]:
    if isinstance(spec, re.Pattern):
        return lambda name, _: spec.match(name) is not None
    if isinstance(spec, str):
        if _GLOB_CHARS.intersection(spec):
            return lambda name, _: fnmatch.fnmatchcase(name, spec)
        return lambda name, _: name == spec

    def call(name: str, obj: object) -> bool:
        try:
            return bool(spec(name, obj))
        except Exception as e:  # the user's callable failed: say which spec and what a spec must be
            raise SpecError(
                f"callable spec {spec!r} raised {type(e).__name__}: {e}; a callable spec takes "
                f"(name, module_or_parameter) and returns a bool"
            ) from e

    return call


def is_within(name: str, ancestors: set[str]) -> bool:
    """Whether the module ``name`` is one of ``ancestors`` or lies inside one of them."""
    if not name:
        return "" in ancestors
    if "" in ancestors or name in ancestors:
        return True
    parts = name.split(".")
    return any(".".join(parts[:i]) in ancestors for i in range(1, len(parts)))


def _suggest(spec: Spec, root: nn.Module, candidates: list[tuple[str, object]], names: list[str]) -> str:
    """Close names; or, for a name with a prefix too many (``backbone.conv1``), the name without it."""
    if isinstance(spec, str) and "." in spec:
        rest = spec.partition(".")[2]
        match = _matcher(rest)
        if any(match(name, obj) for name, obj in candidates):
            return f"did you mean {rest!r}? names are relative to {type(root).__name__}"
    return closest(spec, names)


def resolve_group(root: nn.Module, group: str, specs: object) -> Group:
    """Resolves ``specs`` against ``root``'s submodule and parameter names.

    Args:
        root: the model whose names the specs refer to.
        group: the group's name, for error messages.
        specs: one spec or a sequence of specs (see the module docstring).

    Returns:
        The :class:`Group`, holding names only.

    Raises:
        SpecError: a spec matches nothing (the message names close matches).
        FreezableTypeError: a spec is of no known kind.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> resolve_group(net, "first", "0")
        Group(modules=('0',), parameters=())
        >>> resolve_group(net, "weights", "*.weight")
        Group(modules=(), parameters=('0.weight', '2.weight'))
    """
    specs = as_spec_list(specs)
    module_names = [name for name, _ in root.named_modules() if name]
    named_params = list(root.named_parameters())
    candidates = [(name, module) for name, module in root.named_modules() if name] + named_params

    matched: set[str] = set()
    for spec in specs:
        match = _matcher(spec)
        hits = {name for name, obj in candidates if match(name, obj)}
        if not hits:
            raise SpecError(
                f"spec {spec!r} of group {group!r} matches no submodule or parameter; "
                f"{_suggest(spec, root, candidates, module_names + [name for name, _ in named_params])}"
            )
        matched |= hits

    matched_modules = {name for name in module_names if name in matched}
    top_modules = tuple(
        name
        for name in module_names
        if name in matched_modules and not is_within(name.rpartition(".")[0], matched_modules)
    )
    covered = set(top_modules)
    loose_params = tuple(
        name for name, _ in named_params if name in matched and not is_within(name.rpartition(".")[0], covered)
    )
    return Group(modules=top_modules, parameters=loose_params)


def is_block(name: str) -> bool:
    """Whether ``name`` is one of the fine groups ``block1`` ... ``blockN`` (plain, or of a part:
    ``vision_model.block3``), which summaries fold away.

    Example:
        >>> is_block("block12"), is_block("text_model.block1"), is_block("stage2"), is_block("encoder_block1")
        (True, True, False, False)
    """
    return part_of(name)[1] == "block"

_STAGED = re.compile(r"(?:(?P<part>.+)\.)?(?P<kind>stem|stage|block)(?P<index>[1-9][0-9]*)?")


def part_of(group: str) -> tuple[str, str, int]:
    """``(part, kind, index)`` of a staged group name: ``stem``, ``stageN``, ``blockN``, plain or after a part.

    ``kind`` is ``""`` for any other name (``head``, ``backbone``, a part's umbrella); ``part`` is ``""`` for
    plain names; ``index`` is 0 for the stem and for other names.

    Example:
        >>> part_of("vision_model.block3"), part_of("stage2"), part_of("stem"), part_of("head")
        (('vision_model', 'block', 3), ('', 'stage', 2), ('', 'stem', 0), ('', '', 0))
        >>> part_of("model.backbone.stem"), part_of("stage"), part_of("block0")
        (('model.backbone', 'stem', 0), ('', '', 0), ('', '', 0))
    """
    match = _STAGED.fullmatch(group)
    if match is None or (match["kind"] == "stem") == bool(match["index"]):
        return "", "", 0
    return match["part"] or "", match["kind"], int(match["index"] or 0)


def group_members(root: nn.Module, group: Group) -> frozenset[str]:
    """Every parameter name of ``group`` and every module name (prefixed ``module:``): what it covers."""
    return frozenset(n for n, _ in group.named_parameters(root)) | frozenset(
        "module:" + n for n, _ in group.named_modules(root)
    )


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
    held = frozenset().union(*(members[s] for s in staged))  # what some staged group holds
    staged_modules = [m[len("module:"):] for m in held if m.startswith("module:")]
    for name, own in members.items():
        inside = [s for s in staged if members[s] and members[s] <= own]
        if name in staged or not inside:
            continue
        rest = own - held
        if rest:
            modules = [n[len("module:"):] for n in sorted(rest) if n.startswith("module:")]
            modules = [m for m in modules if not any(s == m or s.startswith(m + ".") for s in staged_modules)]
            modules = _top_most(tuple(modules))
            params = tuple(n for n in sorted(rest) if not n.startswith("module:")
                           and not any(n.startswith(m + ".") for m in modules))
            if modules or params:
                units[inside[-1]].append(Group(modules=modules, parameters=params))
    return list(units.items())


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


def _top_most(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if not any(n.startswith(other + ".") for other in names if other != n))


def enclosing_part(name: str, groups: Mapping[str, object]) -> str | None:
    """The registered group whose name ``name`` continues after a dot (``vision_model`` of
    ``vision_model.block3``; the longest such), or None: the part a part's group belongs to.

    Example:
        >>> enclosing_part("vision_model.block3", {"vision_model": 1, "vision_model.block3": 2})
        'vision_model'
        >>> enclosing_part("block3", {"block3": 1}) is None
        True
    """
    found = [other for other in groups if name.startswith(other + ".")]
    return max(found, key=len) if found else None
