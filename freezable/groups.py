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
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Union

from torch import nn

from .errors import (
    FreezableError,
    SpecError,
    UnknownNameError,
    close_matches,
    did_you_mean,
    no_groups,
    shorten,
    type_error,
)

__all__ = ["Spec", "Group", "resolve_groups", "resolve_group", "as_spec_list", "select", "unknown_name", "is_within",
           "top_most", "is_block", "part_of", "enclosing_part"]

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


def is_within(name: str, ancestors: Collection[str]) -> bool:
    """Whether the dotted name ``name`` is one of ``ancestors`` or lies inside one of them.

    The one test of name containment in the package, for module, parameter and group names alike:
    ``""`` is the root and holds every name; ``"layer1"`` holds ``"layer1.0.conv1"`` but not ``"layer10"``.

    Example:
        >>> is_within("layer1.0.conv1", {"layer1"}), is_within("layer10", ["layer1"]), is_within("fc", [""])
        (True, False, True)
        >>> is_within("", ["layer1"]), is_within("", [""])
        (False, True)
    """
    if not isinstance(ancestors, AbstractSet):
        ancestors = set(ancestors)
    if "" in ancestors or name in ancestors:
        return True
    dot = name.find(".")
    while dot != -1:
        if name[:dot] in ancestors:
            return True
        dot = name.find(".", dot + 1)
    return False


def top_most(names: Iterable[str]) -> tuple[str, ...]:
    """The names that lie inside no other of ``names`` (see :func:`is_within`), in their order.

    Example:
        >>> top_most(["layer1", "layer1.0", "fc", "layer10.bn"])
        ('layer1', 'fc', 'layer10.bn')
        >>> top_most(["", "fc"])
        ('',)
    """
    names = tuple(names)
    present = set(names)
    return tuple(n for n in names if not (n and is_within(n.rpartition(".")[0], present)))


class _Names:
    """The names a spec is tried against: ``root``'s submodules (the root itself aside) and parameters, read once."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.modules = [(name, module) for name, module in root.named_modules() if name]
        self.parameters = list(root.named_parameters())
        self.candidates: list[tuple[str, object]] = [*self.modules, *self.parameters]

    def hits(self, spec: Spec) -> set[str]:
        match = _matcher(spec)
        return {name for name, obj in self.candidates if match(name, obj)}

    def suggest(self, spec: Spec) -> str:
        """Close names; or, for a name with a prefix too many (``backbone.conv1``), the name without it; ``""``
        when nothing is close."""
        if isinstance(spec, str) and "." in spec and not _GLOB_CHARS.intersection(spec):
            rest = spec.partition(".")[2]
            if self.hits(rest):
                return f"did you mean {rest!r}? names are relative to {type(self.root).__name__}"
        near = close_matches(spec, [name for name, _ in self.candidates], of_parts=False)
        return did_you_mean(spec, near) if near else ""

    def group(self, matched: set[str]) -> Group:
        """The top-most matched modules, and the matched parameters none of them brings along, in model order."""
        modules = top_most(name for name, _ in self.modules if name in matched)
        covered = set(modules)
        loose = tuple(name for name, _ in self.parameters
                      if name in matched and not is_within(name.rpartition(".")[0], covered))
        return Group(modules=modules, parameters=loose)


def resolve_groups(root: nn.Module, declared: Mapping[str, object], *, optional: Container[str] = ()
                   ) -> dict[str, Group]:
    """Resolves several groups' specs against ``root``'s submodule and parameter names, each spec once.

    Args:
        root: the model whose names the specs refer to.
        declared: group name -> one spec or a sequence of specs (see the module docstring), in group order.
        optional: groups that may match nothing: a spec of theirs that matches nothing is passed over, and a
            group none of whose specs matches is left out (a preset's groups that it does not freeze).

    Returns:
        The groups, in the order of ``declared``, holding names only.

    Raises:
        SpecError: a spec of a group not in ``optional`` matches nothing (the message names close matches).
        FreezableTypeError: a spec is of no known kind.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> resolve_groups(net, {"first": "0", "head": ["2", "fc"]}, optional={"head"})
        {'first': Group(modules=('0',), parameters=()), 'head': Group(modules=('2',), parameters=())}
    """
    names = _Names(root)
    resolved: dict[str, Group] = {}
    for group, specs in declared.items():
        matched: set[str] = set()
        for spec in as_spec_list(specs):
            hits = names.hits(spec)
            if not hits and group not in optional:
                hint = names.suggest(spec) or f"valid choices: {shorten(n for n, _ in names.candidates)}"
                raise SpecError(f"spec {spec!r} of group {group!r} matches no submodule or parameter; {hint}")
            matched |= hits
        if matched:
            resolved[group] = names.group(matched)
    return resolved


def resolve_group(root: nn.Module, group: str, specs: object) -> Group:
    """Resolves ``specs`` against ``root``'s submodule and parameter names (:func:`resolve_groups` for one group).

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
    return resolve_groups(root, {group: specs})[group]


def select(root: nn.Module, groups: Mapping[str, Group], entries: Iterable[object], what: str) -> list[Group]:
    """The groups ``entries`` name: a registered group's name first, else a spec resolved against ``root``.

    How ``freeze()``, ``unfreeze()`` and ``trainable=`` read names alike: ``"stage4"`` is the group,
    ``"layer4"`` (no group) the submodule, ``"layer4.1.*"`` a glob. Every entry is resolved before any is
    returned.

    Args:
        root: the model whose names the specs refer to.
        groups: the registered groups, in group order.
        entries: group names or specs (a ``re.Pattern`` or a callable is always a spec).
        what: where the entries were given, for messages (``"trainable"``, ``"freeze()"``).

    Raises:
        UnknownNameError: a str entry is neither a group nor a name that matches (the message suggests both).
        SpecError: another spec matches nothing.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> select(net, {"body": Group(("0",))}, ["body", "1.bias"], "freeze()")
        [Group(modules=('0',), parameters=()), Group(modules=(), parameters=('1.bias',))]
    """
    names: _Names | None = None
    selected: list[Group] = []
    for entry in entries:
        if isinstance(entry, str) and entry in groups:
            selected.append(groups[entry])
            continue
        names = names or _Names(root)
        if not isinstance(entry, str):
            selected.append(resolve_group(root, what, entry))
            continue
        hits = names.hits(entry) if entry.strip() else set()
        if not hits:
            raise unknown_name(entry, names, groups, what)
        selected.append(names.group(hits))
    return selected


def unknown_name(name: str, names: _Names, groups: Mapping[str, Group], what: str) -> UnknownNameError:
    """The one message for a name that is neither a group nor a submodule or parameter: the close groups and
    the close names, then the groups in group order (or how to declare some)."""
    model = type(names.root).__name__
    near_groups, near_names = close_matches(name, groups), names.suggest(name)
    if near_groups:  # a dotted name may be a submodule's too
        hint = did_you_mean(name, near_groups, "the group ")
        if "." in name and near_names:
            hint = f"{hint[:-1]}, or {near_names[len('did you mean '):]}"
    else:
        hint = near_names
    listing = f"groups: {list(groups)}" if groups else no_groups(model)
    return UnknownNameError(f"{what} entry {name!r} is neither a group nor a submodule or parameter name of {model}; "
                            + (f"{hint}{' ' if hint.endswith('?') else '; '}" if hint else "") + listing)


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


def enclosing_part(name: str, groups: Mapping[str, object]) -> str | None:
    """The registered group whose name ``name`` continues after a dot (``vision_model`` of
    ``vision_model.block3``; the longest such), or None: the part a part's group belongs to.

    Example:
        >>> enclosing_part("vision_model.block3", {"vision_model": 1, "vision_model.block3": 2})
        'vision_model'
        >>> enclosing_part("block3", {"block3": 1}) is None
        True
    """
    found = [other for other in groups if other != name and is_within(name, {other})]
    return max(found, key=len) if found else None
