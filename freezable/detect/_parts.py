"""From a model's parts (stem, stages, blocks, head, task parts) to ordered freeze groups.

Every source detector describes a model as :class:`Parts`, lists of exact module or parameter names;
:func:`assemble` turns them into the groups :func:`freezable.detect.detect_groups` returns, in one order
for every source: ``stem, stage1 ... stageN, block1 ... blockM``, the task parts (``neck``, ``rpn``,
``roi_heads``), ``head``, ``aux_head``, then the ``backbone`` umbrella. One rule holds for every source:
the staged groups cover the backbone, so whatever the backbone holds outside the stem and the stages (a
final norm) goes with the last stage.

A model of several parts (two towers, an encoder and a decoder) gets each part's groups named after the
part (:func:`part_groups`): ``vision_model.stem``, ``vision_model.block3``, and the umbrella
``vision_model``; plain ``stem``, ``stage1``, ``block1`` belong to models with one stack.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..groups import is_within

__all__ = ["Parts", "instance_of", "assemble", "compact", "param_names", "has_params", "holds_params", "part_groups"]

Groups = dict[str, tuple[str, ...]]


@dataclass
class Parts:
    """A model's parts, as names relative to the model (module or parameter names)."""

    stem: list[str] = field(default_factory=list)
    stages: list[list[str]] = field(default_factory=list)  # in forward order
    blocks: list[list[str]] | None = None  # None: each stage's blocks are its members with parameters
    tasks: dict[str, list[str]] = field(default_factory=dict)  # neck, rpn, roi_heads, in forward order
    head: list[str] = field(default_factory=list)
    aux_head: list[str] = field(default_factory=list)
    backbone: list[str] | None = None  # None: everything but the head and aux head


def instance_of(obj: object, module: str, name: str) -> bool:
    """Whether ``obj`` is an instance of the class ``name`` of the library module ``module``, without importing it:
    a library not imported yet made no instance.

    Example:
        >>> from torch import nn
        >>> instance_of(nn.Linear(1, 1), "torch.nn", "Module"), instance_of(nn.Linear(1, 1), "no_such_lib", "Module")
        (True, False)
    """
    found = getattr(sys.modules.get(module), name, None)
    return isinstance(found, type) and isinstance(obj, found)


def param_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The parameter names under ``names`` (modules bring their subtree), in model order, once each."""
    names = set(names)
    return [p for p, _ in model.named_parameters() if is_within(p, names)]


def compact(model: nn.Module, params: Iterable[str]) -> tuple[str, ...]:
    """The top-most modules whose parameters all lie in ``params``, plus the parameters none of them holds."""
    wanted = set(params)
    total: dict[str, int] = {}
    inside: dict[str, int] = {}
    for pname, _ in model.named_parameters():
        parts = pname.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            total[prefix] = total.get(prefix, 0) + 1
            inside[prefix] = inside.get(prefix, 0) + (pname in wanted)
    chosen: list[str] = []
    for name, _ in model.named_modules():
        if name and total.get(name) and inside[name] == total[name] and not is_within(name, chosen):
            chosen.append(name)
    loose = [p for p, _ in model.named_parameters() if p in wanted and not is_within(p, chosen)]
    return tuple(chosen + loose)


def _default_blocks(model: nn.Module, stages: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each stage's members with parameters; a member that is a Sequential or ModuleList gives its children."""
    modules = dict(model.named_modules())
    blocks: list[list[str]] = []
    for stage in stages:
        for name in stage:
            module = modules.get(name)
            if module is None:
                continue
            if isinstance(module, (nn.Sequential, nn.ModuleList)):
                blocks += [[f"{name}.{n}"] for n, c in module.named_children() if has_params(c)]
            elif has_params(module):
                blocks.append([name])
    return blocks


def has_params(module: nn.Module) -> bool:
    """Whether ``module`` (its subtree) holds any parameter."""
    return any(True for _ in module.parameters())


def assemble(model: nn.Module, parts: Parts) -> Groups:
    """The ordered groups of ``parts``; empty groups are left out.

    The last stage also takes the backbone's parameters that neither the stem nor a stage holds.
    """
    groups: Groups = {}
    head = parts.head + parts.aux_head
    backbone = parts.backbone
    if backbone is None:
        heads = set(head)
        backbone_params = [p for p, _ in model.named_parameters() if not is_within(p, heads)]
        backbone_names = compact(model, backbone_params)
    else:
        backbone_params = param_names(model, backbone)
        backbone_names = tuple(backbone)
    stages = [list(s) for s in parts.stages if s]
    if stages:
        tasks = [n for members in parts.tasks.values() for n in members]
        held = set(param_names(model, parts.stem + [n for s in stages for n in s] + tasks))
        rest = [p for p in backbone_params if p not in held]
        if rest:
            stages[-1] += list(compact(model, rest))
    if parts.stem:
        groups["stem"] = tuple(parts.stem)
    for index, stage in enumerate(stages, start=1):
        groups[f"stage{index}"] = tuple(stage)
    blocks = _default_blocks(model, parts.stages) if parts.blocks is None else parts.blocks
    for index, block in enumerate((b for b in blocks if b), start=1):
        groups[f"block{index}"] = tuple(block)
    for name, members in parts.tasks.items():
        if members:
            groups[name] = tuple(members)
    if parts.head:
        groups["head"] = tuple(parts.head)
    if parts.aux_head:
        groups["aux_head"] = tuple(parts.aux_head)
    if backbone_names and (groups or parts.backbone is not None):
        groups["backbone"] = backbone_names
    return groups


def with_prefix(groups: Groups, prefix: str) -> Groups:
    """``groups`` with every member name prefixed by ``prefix`` (a module's name in its parent, ``"a.b."``)."""
    return {name: tuple(prefix + m for m in members) for name, members in groups.items()}


def holds_params(model: nn.Module, members: Iterable[str]) -> bool:
    """Whether any of ``members`` (module or parameter names of ``model``) holds a parameter; a tied parameter
    counts under every module that holds it."""
    for name in members:
        try:
            if has_params(model.get_submodule(name)):
                return True
        except AttributeError:
            try:
                model.get_parameter(name)
                return True
            except AttributeError:
                continue
    return False


def part_groups(path: str, groups: Mapping[str, Sequence[str]], name: str | None = None) -> Groups:
    """One part's groups, named after the part: ``<name>.<group>``, then the umbrella ``<name>``.

    Any source names the parts of a model of several stacks with it: it reads each part alone (the groups
    a single-stack model gets: ``stem``, ``stage1 ...``, ``block1 ...``, maybe ``head`` and ``backbone``)
    and passes them here with the part's place.

    Args:
        path: where the part sits in the model (``"vision_model"``, ``"model.encoder"``); member names are
            prefixed with it. ``""`` for a part that is no single module (open_clip's text tower is a set of
            the model's own attributes): its members are already named from the model.
        groups: the part's groups, read alone (names relative to the part; relative to the model when
            ``path`` is ``""``).
        name: the part's name in group names (default: ``path``), the attribute path seen from where the
            parts sit (``"encoder"`` for ``model.encoder`` of an encoder-decoder whose base model is ``model``).

    Returns:
        The groups ``<name>.<group>`` in their order, then ``<name>``: the whole part (``path``, or the union
        of the members). The part's ``backbone`` is left out unless the part has a ``head`` (it would equal
        the umbrella).

    Example:
        >>> part_groups("model.vision_tower", {"stem": ("embeddings",), "block1": ("encoder.layers.0",)},
        ...             "vision_tower")
        {'vision_tower.stem': ('model.vision_tower.embeddings',), 'vision_tower.block1': \
('model.vision_tower.encoder.layers.0',), 'vision_tower': ('model.vision_tower',)}
    """
    name = path if name is None else name
    if not name:
        raise ValueError("a part needs a name")
    prefix = path + "." if path else ""
    named: Groups = {}
    for group, members in groups.items():
        if group == "backbone" and "head" not in groups:
            continue
        named[f"{name}.{group}"] = tuple(prefix + m if m else path for m in members)
    named[name] = (path,) if path else tuple(dict.fromkeys(m for members in named.values() for m in members))
    return named

