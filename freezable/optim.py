"""Optimizer parameter groups that stay right while groups are frozen and unfrozen.

Two ways to keep an optimizer in step with a model whose freeze state changes:

* build it once from :func:`param_groups`: every parameter is in it from the start,
  frozen ones too. Frozen parameters have no gradient, so ``torch.optim``
  optimizers skip them and keep no state for them; once unfrozen they train with
  their group's learning rate, and LR schedulers (which see a fixed list of groups)
  keep working;
* or build it from ``trainable_parameters()`` and let
  ``unfreeze(*groups, optimizer=opt)`` add what it lacks (:func:`add_missing`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._state import freeze_root
from .errors import FreezableError, UnknownGroupError, closest, type_error
from .groups import staged_names

if TYPE_CHECKING:
    from .mixin import Freezable

__all__ = ["param_groups", "add_missing", "check_optimizer", "check_lr", "UNGROUPED", "NO_DECAY_SUFFIX"]

UNGROUPED = "ungrouped"  # name of the group of parameters outside every freeze group
NO_DECAY_SUFFIX = ".no_decay"  # companion group of biases and norm weights, without weight decay


def check_lr(lr: object, what: str = "lr") -> float:
    """``lr`` as a float, or a :class:`FreezableError` when it is not a finite number >= 0."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise type_error(what, lr, "a number")
    if not math.isfinite(lr) or lr < 0:
        raise FreezableError(f"{what} must be a finite number >= 0, got {lr!r}")
    return float(lr)


def check_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """``optimizer`` if it is a ``torch.optim.Optimizer``, else a :class:`FreezableTypeError`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise type_error("optimizer", optimizer, "a torch.optim.Optimizer")
    return optimizer


def param_groups(
    model: Freezable,
    lr: float,
    *,
    weight_decay: float = 0.0,
    lr_scale: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer-ready parameter groups, one per freeze group, frozen parameters included.

    Groups come in group order, one per staged group (umbrella groups, those that
    contain another group, get only the parameters no staged group has), then one
    named ``"ungrouped"`` for the parameters outside every group. Each has a
    companion ``"<name>.no_decay"`` holding its biases and norm weights (every
    parameter with ``ndim <= 1``) with ``weight_decay=0``. Every parameter appears
    once (where groups overlap, in the first group that has it); empty groups are
    left out.

    Args:
        model: a :class:`~freezable.Freezable`.
        lr: the base learning rate.
        weight_decay: weight decay of the groups that are not ``.no_decay``.
        lr_scale: group name -> multiplier of ``lr`` (discriminative learning
            rates, as fastai's ``slice``); a group not named gets ``lr``. The name
            applies to the group and its ``.no_decay`` companion; an umbrella's
            name (``backbone``) applies to every group inside it that is not named itself.

    Returns:
        A list of dicts with keys ``params``, ``lr``, ``weight_decay`` and ``name``.

    Raises:
        UnknownGroupError: ``lr_scale`` names neither a freeze group nor ``"ungrouped"``.
        FreezableTypeError: ``lr``, ``weight_decay`` or a multiplier is not a number >= 0.

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
    """
    lr = check_lr(lr)
    weight_decay = check_lr(weight_decay, "weight_decay")
    owners = _partition(model)
    scale = _check_scale(model, lr_scale, owners)
    groups: list[dict[str, Any]] = []
    for name, params in owners:
        group_lr = lr * scale.get(name, 1.0)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        if decay:
            groups.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0, "name": name + NO_DECAY_SUFFIX})
    return groups


def _partition(model: Freezable) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) of each staged group, then umbrella leftovers, then the ungrouped rest."""
    root = freeze_root(model)
    registered = {name: model.freeze_group(name) for name in model.freeze_group_names}
    staged = staged_names(root, registered)
    order = list(staged) + [name for name in registered if name not in staged]
    seen: set[int] = set()
    owners: list[tuple[str, list[nn.Parameter]]] = []
    for name in order:
        params = [p for _, p in registered[name].named_parameters(root) if id(p) not in seen]
        seen.update(id(p) for p in params)
        owners.append((name, params))
    rest = [p for p in model.parameters() if id(p) not in seen]  # type: ignore[attr-defined]
    seen.update(id(p) for p in rest)
    owners.append((UNGROUPED, rest))
    return [(name, params) for name, params in owners if params]


def _check_scale(
    model: Freezable, lr_scale: Mapping[str, float] | None, owners: list[tuple[str, list[nn.Parameter]]]
) -> dict[str, float]:
    """Multiplier of each returned group; an umbrella's applies to the groups inside it not named themselves."""
    if lr_scale is None:
        return {}
    if not isinstance(lr_scale, Mapping):
        raise type_error("lr_scale", lr_scale, "a mapping of group names to multipliers")
    names = [name for name, _ in owners]
    valid = names + [g for g in model.freeze_group_names if g not in names]
    for name, factor in lr_scale.items():
        if name not in valid:
            raise UnknownGroupError(
                f"lr_scale names {name!r}, which is neither a freeze group nor {UNGROUPED!r}; {closest(name, valid)}"
            )
        check_lr(factor, f"lr_scale[{name!r}]")
    scale: dict[str, float] = {}
    root = freeze_root(model)
    for umbrella in (g for g in lr_scale if g not in names):  # an umbrella: scale the groups it covers
        inside = {id(p) for _, p in model.freeze_group(umbrella).named_parameters(root)}
        for name, params in owners:
            if all(id(p) in inside for p in params):
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
