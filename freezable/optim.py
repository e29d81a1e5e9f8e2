"""Optimizer parameter groups that stay right while groups are frozen and unfrozen.

Two ways to keep an optimizer in step with a model whose freeze state changes:

* build it once from :func:`param_groups`: every parameter is in it from the start,
  frozen ones too. Frozen parameters have no gradient, so ``torch.optim``
  optimizers skip them and keep no state for them; once unfrozen they train with
  their group's learning rate, and LR schedulers (which see a fixed list of groups)
  keep working;
* or build it from ``trainable_parameters()`` and let
  ``unfreeze(*groups, optimizer=opt)`` add what it lacks (:func:`add_missing`).

And one way to keep it lean when groups freeze during training: :func:`release_optimizer_state`
drops what the optimizer keeps for frozen parameters (momentum, Adam's moments), which torch
never frees by itself.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ._state import freeze_root
from .errors import FreezableError, UnknownGroupError, closest, type_error
from .groups import Group, part_of
from .stages import staged_names

__all__ = [
    "Grouped",
    "param_groups",
    "layer_scales",
    "add_missing",
    "release_optimizer_state",
    "check_optimizer",
    "keeps_one_history",
    "check_nonnegative",
    "check_layer_decay",
    "UNGROUPED",
    "NO_DECAY_SUFFIX",
]

UNGROUPED = "ungrouped"  # name of the group of parameters outside every freeze group
NO_DECAY_SUFFIX = ".no_decay"  # companion group of biases and norm weights, without weight decay


class Grouped(Protocol):
    """What :func:`param_groups` reads of a model: its registered groups and its parameters.

    A :class:`~freezable.Freezable` is one (the mixin calls :func:`param_groups` with itself), so this
    module needs nothing of the mixin's.
    """

    @property
    def freeze_group_map(self) -> Mapping[str, Group]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...


def check_nonnegative(value: object, what: str) -> float:
    """``value`` as a float, or an error naming it as ``what`` when it is not a finite number >= 0.

    For learning rates, weight decay and ``lr_scale`` factors alike.

    Raises:
        FreezableTypeError: ``value`` is not a number (a bool is not one).
        FreezableError: ``value`` is negative, infinite or NaN.

    Example:
        >>> check_nonnegative(3, "weight_decay")
        3.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(what, value, "a number")
    if not math.isfinite(value) or value < 0:
        raise FreezableError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """``optimizer`` if it is a ``torch.optim.Optimizer``, else a :class:`FreezableTypeError`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", optimizer, "a torch.optim.Optimizer")
    return optimizer


def param_groups(
    model: Grouped,
    lr: float,
    *,
    weight_decay: float = 0.0,
    lr_scale: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer-ready parameter groups, one per freeze group, frozen parameters included.

    Groups come in group order, one per staged group (umbrella groups, those that
    contain another group, get only the parameters no staged group has), then one
    named ``"ungrouped"`` for the parameters outside every group. Each has a
    companion ``"<name>.no_decay"`` with ``weight_decay=0`` holding its biases and norm
    weights (every parameter with ``ndim <= 1``) and the parameters the model's
    ``no_weight_decay()`` names, when it has that method (timm models: ``pos_embed``,
    ``cls_token`` ...; names relative to the freeze root, ``fnmatch`` patterns as in
    timm). Every parameter appears once (where groups overlap, in the first group that
    has it); empty groups are left out.

    With ``layer_decay``, the layers are ``stem``, then the ``block1`` ... ``blockN``
    groups (without block groups: ``stage1`` ... ``stageN``), then everything else (the
    head): layer ``i`` of ``0 .. L`` gets ``lr * layer_decay ** (L - i)``, the stem
    the smallest rate and the head ``lr``. Layers without parameters are left out
    of the count. For a timm model whose block groups are those of its fine
    ``group_matcher``, every parameter's rate and weight decay equal those of
    ``timm.optim.param_groups_layer_decay(model, weight_decay,
    no_weight_decay_list=model.no_weight_decay(), layer_decay=layer_decay)``, which
    leaves frozen parameters out; here they stay in, so unfreezing a block later
    trains it at its own rate with the same optimizer.

    Args:
        model: a :class:`~freezable.Freezable` (any :class:`Grouped` model).
        lr: the base learning rate.
        weight_decay: weight decay of the groups that are not ``.no_decay``.
        lr_scale: group name -> multiplier of ``lr`` (discriminative learning
            rates, as fastai's ``slice``); a group not named gets ``lr``. The name
            applies to the group and its ``.no_decay`` companion; an umbrella's
            name (``backbone``) applies to every group inside it that is not named itself.
        layer_decay: a number in ``(0, 1]``: layer-wise learning-rate decay, multiplied
            with ``lr_scale``. ``None`` (the default): none.

    Returns:
        A list of dicts with keys ``params``, ``lr``, ``weight_decay``, ``name`` and
        ``lr_scale`` (the group's multiplier of ``lr``, which timm's schedulers apply).

    Raises:
        UnknownGroupError: ``lr_scale`` names neither a freeze group nor ``"ungrouped"``.
        FreezableTypeError: ``lr``, ``weight_decay``, a multiplier or ``layer_decay`` is not a number.
        FreezableError: one of them is out of range, or ``layer_decay`` is given to a
            model without block or stage groups.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from freezable import Freezable
        >>> class Net(Freezable, nn.Sequential):
        ...     freeze_groups = {"body": "0", "head": "1"}
        >>> net = Net(nn.Linear(4, 4), nn.Linear(4, 2)).freeze("body")
        >>> groups = net.param_groups(1e-3, weight_decay=0.01, lr_scale={"body": 0.1})
        >>> [(g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in groups]
        [('body', 1, 0.0001, 0.01), ('body.no_decay', 1, 0.0001, 0.0),
         ('head', 1, 0.001, 0.01), ('head.no_decay', 1, 0.001, 0.0)]
        >>> opt = torch.optim.AdamW(groups)  # built once; unfreezing "body" later needs no change
        >>> class Deep(Freezable, nn.Sequential):
        ...     freeze_groups = {"stem": "0", "block1": "1", "block2": "2", "head": "3"}
        >>> deep = Deep(*(nn.Linear(4, 4) for _ in range(4)))
        >>> [(g["name"], g["lr_scale"]) for g in deep.param_groups(1.0, layer_decay=0.5)][::2]
        [('stem', 0.125), ('block1', 0.25), ('block2', 0.5), ('head', 1.0)]
    """
    lr = check_nonnegative(lr, "lr")
    weight_decay = check_nonnegative(weight_decay, "weight_decay")
    decay_rate = check_layer_decay(layer_decay)
    root = freeze_root(model)
    owners = _partition(model, root)
    scale = _check_scale(model, lr_scale, owners, root)
    if decay_rate is not None:
        layers = layer_scales([name for name, _ in owners], decay_rate)
        scale = {name: scale.get(name, 1.0) * layers[name] for name, _ in owners}
    skip = _no_weight_decay(model)
    groups: list[dict[str, Any]] = []
    for name, named in owners:
        factor = scale.get(name, 1.0)
        no_decay = {id(p) for n, p in named if p.ndim <= 1 or any(fnmatch.fnmatchcase(n, s) for s in skip)}
        for suffix, decay in (("", weight_decay), (NO_DECAY_SUFFIX, 0.0)):
            params = [p for _, p in named if (id(p) in no_decay) == bool(suffix)]
            if params:
                groups.append({"params": params, "lr": lr * factor, "weight_decay": decay, "name": name + suffix,
                               "lr_scale": factor})
    return groups


def check_layer_decay(layer_decay: object) -> float | None:
    """``layer_decay`` as a float in ``(0, 1]`` (or ``None``), else a :class:`FreezableError`."""
    if layer_decay is None:
        return None
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)):
        raise type_error("layer_decay", layer_decay, "a number in (0, 1]")
    if not 0 < layer_decay <= 1:  # NaN fails too
        raise FreezableError(f"layer_decay must be in (0, 1] (0.65 to 0.9 are usual), got {layer_decay!r}")
    return float(layer_decay)


def layer_scales(names: Sequence[str], layer_decay: float) -> dict[str, float]:
    """Multiplier of each group's learning rate under layer-wise decay (timm's layer ids, see :func:`param_groups`).

    A model of several parts (``vision_model.block3``, ``text_model.stem``) ranks each part's stem and blocks
    on their own, as two-tower recipes decay each tower from its top; a group of no part's ranking
    (``head``, a projection) is the top.

    Example:
        >>> layer_scales(["stem", "stage1", "stage2", "head", "ungrouped"], 0.5)
        {'stem': 0.125, 'stage1': 0.25, 'stage2': 0.5, 'head': 1.0, 'ungrouped': 1.0}
        >>> layer_scales(["stem", "block2", "block1"], 0.5)  # no head: the last block is the top layer
        {'stem': 0.25, 'block2': 1.0, 'block1': 0.5}
        >>> layer_scales(["a.stem", "a.block1", "b.block1", "b.block2", "proj"], 0.5)
        {'a.stem': 0.25, 'a.block1': 0.5, 'b.block1': 0.25, 'b.block2': 0.5, 'proj': 1.0}
    """
    parts = list(dict.fromkeys(part_of(name)[0] for name in names if part_of(name)[1]))
    layer_id: dict[str, tuple[str, int]] = {}  # group -> (part, its layer id in the part)
    for part in parts:
        blocks = _numbered(names, part, "block") or _numbered(names, part, "stage")
        stem = f"{part}.stem" if part else "stem"
        ranked = ([stem] if stem in names else []) + blocks
        if blocks:
            layer_id.update((name, (part, i)) for i, name in enumerate(ranked))
    if not layer_id:
        raise FreezableError(
            f"layer_decay needs block groups ('block1', ...) or stage groups ('stage1', ...) to rank the layers; "
            f"the model's groups are {list(names)}: register them, e.g. "
            f"model.register_freeze_group('block1', 'blocks.0')"
        )
    outside = any(name not in layer_id for name in names)
    top = {part: max(i for p, i in layer_id.values() if p == part) + outside for part in parts}
    return {name: layer_decay ** (top[layer_id[name][0]] - layer_id[name][1]) if name in layer_id else 1.0
            for name in names}


def _numbered(names: Sequence[str], part: str, kind: str) -> list[str]:
    """The groups ``<kind><number>`` of ``part`` (``""``: plain names) among ``names``, in number order."""
    found = [name for name in names if part_of(name)[:2] == (part, kind)]
    return sorted(found, key=lambda name: part_of(name)[2])


def _no_weight_decay(model: Grouped) -> tuple[str, ...]:
    """The model's ``no_weight_decay()`` names (timm's convention) relative to its freeze root, or none."""
    method = getattr(freeze_root(model), "no_weight_decay", None)
    return tuple(method()) if callable(method) else ()


def _partition(model: Grouped, root: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """(name, named parameters) of each staged group, then umbrella leftovers, then the ungrouped rest.

    Parameter names are relative to the freeze ``root`` (as in ``state_dict()``).
    """
    registered = model.freeze_group_map
    staged = staged_names(root, registered)
    order = list(staged) + [name for name in registered if name not in staged]
    seen: set[int] = set()
    owners: list[tuple[str, list[tuple[str, nn.Parameter]]]] = []
    for name in order:
        named = [(n, p) for n, p in registered[name].named_parameters(root) if id(p) not in seen]
        seen.update(id(p) for _, p in named)
        owners.append((name, named))
    root_names = {id(p): n for n, p in root.named_parameters()}
    rest = [(root_names.get(id(p), n), p) for n, p in model.named_parameters()  # type: ignore[attr-defined]
            if id(p) not in seen]
    owners.append((UNGROUPED, rest))
    return [(name, named) for name, named in owners if named]


def _check_scale(
    model: Grouped,
    lr_scale: Mapping[str, float] | None,
    owners: list[tuple[str, list[tuple[str, nn.Parameter]]]],
    root: nn.Module,
) -> dict[str, float]:
    """Multiplier of each returned group; an umbrella's applies to the groups inside it not named themselves."""
    if lr_scale is None:
        return {}
    if not isinstance(lr_scale, Mapping):
        raise type_error("lr_scale", lr_scale, "a mapping of group names to multipliers")
    names = [name for name, _ in owners]
    registered = model.freeze_group_map
    valid = names + [g for g in registered if g not in names]
    for name, factor in lr_scale.items():
        if name not in valid:
            raise UnknownGroupError(
                f"lr_scale names {name!r}, which is neither a freeze group nor {UNGROUPED!r}; {closest(name, valid)}"
            )
        check_nonnegative(factor, f"lr_scale[{name!r}]")
    scale: dict[str, float] = {}
    for umbrella in (g for g in lr_scale if g not in names):  # an umbrella: scale the groups it covers
        inside = {id(p) for _, p in registered[umbrella].named_parameters(root)}
        for name, named in owners:
            if all(id(p) in inside for _, p in named):
                scale[name] = float(lr_scale[umbrella])
    scale.update((name, float(factor)) for name, factor in lr_scale.items() if name in names)
    return scale


def add_missing(
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    *,
    lr: float | None = None,
    name: str = "unfrozen",
) -> dict[str, Any] | None:
    """Adds the trainable ``params`` that ``optimizer`` lacks as one new param group.

    The new group copies the hyperparameters of the optimizer's first group (its
    current ``lr``, betas, momentum, weight decay, and any keys an LR scheduler put
    there such as ``initial_lr``), with ``lr`` (and ``initial_lr``) replaced when
    ``lr`` is given. Parameters the optimizer has already, in any group, are not added.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        params: candidate parameters; those without ``requires_grad`` are skipped.
        lr: the new group's learning rate; default: the first group's current ``lr``.
        name: the new group's ``"name"``.

    Returns:
        The group added, or ``None`` when nothing was missing.

    Example:
        >>> import torch
        >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([a], lr=0.1, momentum=0.9)
        >>> add_missing(opt, [a, b])["lr"], len(opt.param_groups), add_missing(opt, [a, b])
        (0.1, 2, None)
    """
    have = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing: list[nn.Parameter] = []
    for p in params:
        if p.requires_grad and id(p) not in have:
            have.add(id(p))
            missing.append(p)
    if not missing:
        return None
    group = {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "name")}
    if lr is not None:
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] = lr
    group.update(params=missing, name=name)
    optimizer.add_param_group(group)
    return optimizer.param_groups[-1]


def keeps_one_history(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` (or the optimizer a wrapper such as accelerate's ``AcceleratedOptimizer`` holds) is an
    ``LBFGS``, whose one curvature history spans all its parameters: no part of its state can be released."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return isinstance(optimizer, torch.optim.LBFGS) or isinstance(inner, torch.optim.LBFGS)


def release_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> int:
    """Drops the optimizer state of every frozen parameter (momentum, Adam's moments, step); returns the bytes freed.

    A ``torch.optim`` optimizer keeps ``optimizer.state[p]`` for every parameter it ever stepped, and
    keeps it when ``p`` is frozen: the memory stays taken, and an unfreeze later resumes from momentum
    that is stale by then. This drops the entry of each parameter the optimizer holds whose
    ``requires_grad`` is ``False`` (with ``model``: of those that are ``model``'s parameters too), so
    the tensors are freed; the parameters stay in their param groups, so LR schedulers and
    ``optimizer.state_dict()`` keep working. A parameter unfrozen later starts its state afresh, as in
    a new optimizer (SGD's momentum from its next gradient, Adam's step count from 1).
    :func:`freezable.check` reports frozen parameters that still hold state.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (a wrapper such as accelerate's, whose ``state`` is
            its inner optimizer's, too); not ``LBFGS``, whose one history spans all its parameters.
        model: only release the state of this module's parameters (an optimizer that trains several
            models); ``None``: every frozen parameter the optimizer holds.

    Returns:
        The bytes of the tensors dropped from ``optimizer.state`` (each tensor counted once).

    Raises:
        FreezableTypeError: ``optimizer`` is not an optimizer, or ``model`` not a module.
        FreezableError: ``optimizer`` is an ``LBFGS``: build a new one after freezing instead.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        >>> net(torch.randn(3, 4)).sum().backward(); opt.step()
        >>> net[0].requires_grad_(False)  # frozen by hand here; Freezable.freeze does the same
        Linear(...)
        >>> release_optimizer_state(opt, net)  # 4x4 weight and bias: exp_avg, exp_avg_sq (float32) and step each
        168
        >>> len(opt.state)  # the second layer's two parameters keep theirs
        2
    """
    check_optimizer(optimizer)
    if keeps_one_history(optimizer):
        raise FreezableError(
            "release_optimizer_state cannot release part of an LBFGS: it keeps one curvature history over all its "
            "parameters; build a new LBFGS over the trainable parameters after freezing"
        )
    if model is not None and not isinstance(model, nn.Module):
        raise type_error("release_optimizer_state's model", model, "an nn.Module instance or None")
    scope = None if model is None else {id(p) for p in model.parameters()}
    state = optimizer.state
    seen: set[int] = set()
    freed = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad or (scope is not None and id(p) not in scope) or p not in state:
                continue
            for value in state.pop(p).values():
                if isinstance(value, torch.Tensor) and id(value) not in seen:
                    seen.add(id(value))
                    freed += value.nelement() * value.element_size()
    return freed
