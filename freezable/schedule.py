"""Gradual unfreezing: :class:`UnfreezeSchedule`, over the staged groups (``Freezable.freeze_to`` walks them too).

*Staged* groups are the registered groups that contain no other registered group,
in group order (``stem, stage1 ... stageN, head`` for detected models). Umbrella
groups (``backbone``, which contains the stem and stages) are skipped by the walks here;
what an umbrella holds outside every staged group (a final norm after the last stage's
blocks) goes with its last staged group (:func:`freezable.stages.walk_units`), both in
``freeze_to`` and in :class:`UnfreezeSchedule`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._state import check_state, freeze_root
from .errors import FreezableError, FreezeStateError, type_error, unknown_group
from .groups import Group
from .mixin import Freezable
from .optim import add_missing, check_nonnegative, check_optimizer
from .stages import staged_names, units_within, walk_units

__all__ = ["UnfreezeSchedule", "staged_groups"]

_STATE_FORMAT = "freezable.unfreeze_schedule"
_STATE_VERSION = 1


def staged_groups(model: Freezable) -> tuple[str, ...]:
    """The registered groups that contain no other registered group, in group order.

    Example:
        >>> import torch, torchvision
        >>> from freezable import FrozenBackbone
        >>> staged_groups(FrozenBackbone(torchvision.models.resnet18()))
        ('stem', 'block1', 'block2', 'block3', 'block4', 'block5', 'block6', 'block7', 'block8', 'head')
    """
    return staged_names(freeze_root(_check_model(model)), model.freeze_group_map)


def _check_model(model: object) -> Freezable:
    if not isinstance(model, Freezable):
        raise type_error("the model", model, "a Freezable model", fix="wrap a plain module: fz.FrozenBackbone(model)")
    return model


class UnfreezeSchedule:
    """Unfreezes groups at given epochs; ``step(epoch)`` sets the state that epoch should have.

    The state at epoch ``e`` is the freeze state the model had when the schedule
    was built, with every group scheduled at an epoch ``<= e`` unfrozen. A schedule
    walks the staged groups as ``freeze_to`` does: unfreezing a group also unfreezes
    what an umbrella holds outside its staged groups and that ends with them (convnext's
    ``head.norm`` goes with its last block), so a schedule over every block and the head
    leaves nothing frozen. ``model.unfreeze(group)`` unfreezes exactly the group's members. ``step``
    sets exactly that state, so it is idempotent and right after a resume at any
    epoch (or a step back). Keep :meth:`state_dict` beside the checkpoint: it holds
    that initial state, which a resumed model no longer shows.

    Args:
        model: a :class:`~freezable.Freezable`, in its initial freeze state.
        milestones: epoch (int >= 0) -> a group name or a list of them.
        optimizer: default optimizer for :meth:`step`: parameters that become
            trainable and that it lacks are added to it as one new group
            (see ``Freezable.unfreeze``).
        lr: learning rate of such added groups (default: the optimizer's first group's).

    Raises:
        UnknownGroupError: a milestone names a group the model lacks.
        FreezableError: an epoch is negative.
        FreezableTypeError: an epoch is not an int, or a value is not a name or list of names.

    Example:
        >>> import torchvision
        >>> from freezable import FrozenBackbone
        >>> fb = FrozenBackbone(torchvision.models.resnet18(), trainable=["head"])
        >>> schedule = UnfreezeSchedule(fb, {1: ["stage4"], 3: ["stage3", "stage2"]})
        >>> stages = lambda model: [g for g in model.frozen_groups if not g.startswith("block")]
        >>> stages(schedule.step(3))      # resumed at epoch 3
        ['stem', 'stage1']
        >>> stages(schedule.step(1))
        ['stem', 'stage1', 'stage2', 'stage3']
    """

    def __init__(
        self,
        model: Freezable,
        milestones: Mapping[int, str | Sequence[str]],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
    ) -> None:
        self.model = _check_model(model)
        self.milestones = _check_milestones(self.model, milestones)
        self.optimizer = None if optimizer is None else check_optimizer(optimizer)
        self.lr = None if lr is None else check_nonnegative(lr, "lr")
        self.initial_state = self.model.freeze_state()
        self.last_epoch: int | None = None

    def __repr__(self) -> str:
        return f"UnfreezeSchedule({self.milestones}, last_epoch={self.last_epoch})"

    def groups_at(self, epoch: int) -> list[str]:
        """The groups unfrozen at ``epoch`` (scheduled at or before it), in schedule order."""
        epoch = _check_epoch(epoch)
        return [g for e, groups in sorted(self.milestones.items()) if e <= epoch for g in groups]

    def _unit_groups(self, names: Sequence[str], units: list[tuple[str, list[Group]]] | None = None) -> list[Group]:
        """The named groups, each with the parts of umbrellas that end with its staged groups."""
        root = freeze_root(self.model)
        groups = self.model.freeze_group_map
        units = walk_units(root, groups) if units is None else units
        return [groups[name] for name in names] + [
            g for name in names for i in units_within(root, groups, name, units) for g in units[i][1]
        ]

    def target_state(self, epoch: int) -> dict[str, Any]:
        """The freeze state that ``step(epoch)`` sets."""
        root = freeze_root(self.model)
        modules: set[int] = set()  # by identity: a shared module or tied parameter may go by several names
        params: set[int] = set()
        for group in self._unit_groups(self.groups_at(epoch)):
            modules.update(id(m) for _, m in group.named_modules(root))
            params.update(id(p) for _, p in group.named_parameters(root))
        state = dict(self.initial_state)
        state["frozen_modules"] = [n for n in state["frozen_modules"] if id(root.get_submodule(n)) not in modules]
        state["frozen_parameters"] = [n for n in state["frozen_parameters"] if id(root.get_parameter(n)) not in params]
        if "norm_eval_modules" in state:  # norm_eval is no freezing: the schedule leaves the model's own setting
            state["norm_eval_modules"] = self.model.freeze_state()["norm_eval_modules"]
        return state

    def step(self, epoch: int, *, optimizer: torch.optim.Optimizer | None = None, lr: float | None = None) -> Freezable:
        """Sets the model's freeze state to that of ``epoch``; changes nothing when it is already so.

        With an optimizer, the parameters that each milestone up to ``epoch`` made trainable
        and that the optimizer lacks are added, one param group per milestone, so the
        optimizer's groups depend on ``epoch`` only. When resuming with an optimizer built from
        ``trainable_parameters()``, restore its groups before its state::

            schedule.load_state_dict(ckpt["schedule"])
            schedule.step(schedule.last_epoch, optimizer=opt)
            opt.load_state_dict(ckpt["optimizer"])

        (An optimizer built from ``model.param_groups`` never changes groups: nothing to do.)

        Args:
            epoch: the epoch about to start (0-based, as Lightning's ``current_epoch``).
            optimizer: overrides the schedule's optimizer for this call.
            lr: overrides the schedule's ``lr`` for this call.

        Returns:
            The model.
        """
        optimizer = self.optimizer if optimizer is None else check_optimizer(optimizer)
        lr = self.lr if lr is None else check_nonnegative(lr, "lr")
        target = self.target_state(epoch)
        if not _same_state(self.model.freeze_state(), target):
            self.model.load_freeze_state(target)
        if optimizer is not None:  # one group per milestone reached, whatever the stepping history
            root = freeze_root(self.model)
            units = walk_units(root, self.model.freeze_group_map)
            for e, groups in self.milestones.items():
                if e <= epoch:
                    params = [p for g in self._unit_groups(groups, units) for _, p in g.named_parameters(root)]
                    add_missing(optimizer, params, lr=lr, name=f"unfrozen@{e}:" + ",".join(groups))
        self.last_epoch = epoch
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Milestones, the initial freeze state and the last epoch stepped; plain data (``weights_only``-safe)."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "milestones": {e: list(g) for e, g in self.milestones.items()},
            "initial_state": self.initial_state,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved; the model is not changed until the next :meth:`step`.

        Raises:
            FreezeStateError: ``state`` is malformed or names what the model lacks.
        """
        if not isinstance(state, Mapping) or (state.get("format"), state.get("version")) != (_STATE_FORMAT, _STATE_VERSION):
            raise FreezeStateError(f"not an UnfreezeSchedule state of version {_STATE_VERSION}: {state!r:.200}")
        try:
            milestones = _check_milestones(self.model, state["milestones"])
            last_epoch = state["last_epoch"]
            if last_epoch is not None:
                _check_epoch(last_epoch)
        except (KeyError, FreezableError) as e:
            raise FreezeStateError(f"bad UnfreezeSchedule state: {e}") from None
        initial = state.get("initial_state")
        _check_freeze_state(self.model, initial)
        self.milestones, self.initial_state, self.last_epoch = milestones, dict(initial), last_epoch


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise type_error("an epoch", epoch, "an int >= 0")
    if epoch < 0:
        raise FreezableError(f"an epoch must be an int >= 0, got {epoch!r}")
    return epoch


def _check_milestones(model: Freezable, milestones: object) -> dict[int, list[str]]:
    if not isinstance(milestones, Mapping):
        raise type_error("milestones", milestones, "a mapping of epochs to group names", fix="e.g. {1: ['stage4']}")
    known = model.freeze_group_names
    checked: dict[int, list[str]] = {}
    for epoch, groups in milestones.items():
        _check_epoch(epoch)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, Sequence) or not all(isinstance(g, str) for g in groups):
            raise type_error(f"milestone {epoch}", groups, "a group name or a list of them")
        for group in groups:
            if group not in known:
                error = unknown_group(group, known, type(model).__name__)
                raise type(error)(f"milestone {epoch} names {error}") from None
        checked[epoch] = list(groups)
    return dict(sorted(checked.items()))


def _check_freeze_state(model: Freezable, state: object) -> None:
    """Raises FreezeStateError when ``state`` would not load on ``model`` (without changing it)."""
    check_state(freeze_root(model), state)


def _same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (set(a["frozen_modules"]) == set(b["frozen_modules"])
            and set(a["frozen_parameters"]) == set(b["frozen_parameters"]))
