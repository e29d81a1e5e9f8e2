"""Hugging Face ``Trainer`` callbacks: :class:`GradualUnfreezing` and :class:`ProgressiveFreezingCallback`.

Importing this module imports transformers; nothing else in freezable does.

Example:
    >>> from freezable.integrations.transformers import GradualUnfreezing
    >>> callback = GradualUnfreezing({1: ["block4"], 2: ["block3"]})
    >>> # transformers.Trainer(model=fz.FrozenBackbone(bert, trainable=["head"]), callbacks=[callback], ...)
    >>> from freezable.integrations.transformers import ProgressiveFreezingCallback
    >>> freezing = ProgressiveFreezingCallback("schedule", start=0.5)  # total_steps: the Trainer's max_steps
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..errors import FreezableError, FreezableTypeError, type_error
from ..mixin import Freezable, outermost_freezables
from ..progressive import ProgressiveFreezing, check_options
from ..schedule import UnfreezeSchedule

__all__ = ["GradualUnfreezing", "ProgressiveFreezingCallback"]


def _find_freezable(module: nn.Module, what: str = "GradualUnfreezing") -> Freezable:
    outermost = outermost_freezables(module)
    if len(outermost) != 1:
        has = "no Freezable" if not outermost else f"several Freezables: {[n for n, _ in outermost]}"
        raise FreezableError(f"{what} needs one Freezable model in {type(module).__name__}, which has "
                             f"{has}; pass model= the one you mean")
    return outermost[0][1]


class GradualUnfreezing(TrainerCallback):
    """Drives an :class:`~freezable.UnfreezeSchedule` at the start of every Trainer epoch.

    At each ``on_epoch_begin`` the model gets the freeze state of the epoch about to run (0-based). The
    Trainer builds its optimizer once, from the parameters that need a gradient when training starts; the
    parameters a milestone makes trainable are added to it as one param group per milestone (learning rate
    ``lr``, default the first group's initial one), and its LR scheduler gets a view of each new group (its
    ``base_lrs`` and, for a ``LambdaLR``, the first group's lambda), so the new group follows the schedule.
    Frozen dropout and norm layers stay at inference through the Trainer's own ``model.train()`` calls
    (a :class:`~freezable.Freezable` holds them there whoever calls ``train()``).

    Args:
        milestones: epoch (int >= 0) -> a group name or a list of them; or an ``UnfreezeSchedule``.
        model: the Freezable to drive; default: the Trainer's model if it is one, else its one outermost
            Freezable submodule (found at ``on_train_begin``). Given here, milestones are checked at once.
        lr: learning rate of the groups added to the optimizer.

    Raises:
        UnknownGroupError: a milestone names a group the model lacks (at once with ``model``, else when
            training begins, before anything changes).
        FreezableError: an epoch is negative, or no single Freezable is found.
        FreezableTypeError: an argument of the wrong type.
    """

    def __init__(
        self,
        milestones: UnfreezeSchedule | Mapping[int, str | Sequence[str]],
        *,
        model: Freezable | None = None,
        lr: float | None = None,
    ) -> None:
        if not isinstance(milestones, (UnfreezeSchedule, Mapping)):
            raise FreezableTypeError(f"GradualUnfreezing takes an UnfreezeSchedule or a mapping of epochs to groups, "
                                     f"not {type(milestones).__name__}: {milestones!r}")
        if model is not None and not isinstance(model, Freezable):
            raise type_error("GradualUnfreezing's model", model, "a Freezable model or None",
                             fix="make it one in place: fz.freezable(model)")
        self.lr = lr
        self.schedule = milestones if isinstance(milestones, UnfreezeSchedule) else None
        self._milestones = None if self.schedule is not None else dict(milestones)
        if self.schedule is None and model is not None:
            self.schedule = UnfreezeSchedule(model, self._milestones, lr=lr)
        elif self._milestones is not None:  # check what can be checked without the model
            UnfreezeSchedule(_Probe(), {e: [] for e in self._milestones})

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       **kwargs: Any) -> None:
        if self.schedule is None:
            if model is None:
                raise FreezableError("GradualUnfreezing got no model from the Trainer; pass model=")
            self.schedule = UnfreezeSchedule(_find_freezable(model), self._milestones, lr=self.lr)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, optimizer: torch.optim.Optimizer | None = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        groups_before = len(optimizer.param_groups) if optimizer is not None else 0
        self.schedule.step(epoch, optimizer=optimizer, lr=self.lr)
        if optimizer is not None and lr_scheduler is not None and len(optimizer.param_groups) > groups_before:
            _extend_scheduler(getattr(lr_scheduler, "scheduler", lr_scheduler), optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.schedule is None else self.schedule.state_dict()


class ProgressiveFreezingCallback(TrainerCallback):
    """Drives a :class:`~freezable.ProgressiveFreezing` after every optimizer step of a ``Trainer`` run.

    Built at ``on_train_begin`` on the Trainer's model (or ``model=``; the model itself if it is a Freezable,
    else its one outermost Freezable submodule), with the Trainer's optimizer, whose state for each frozen
    group is released; for ``"schedule"`` without ``total_steps``, the Trainer's ``max_steps``. Or pass one built
    already. It steps at ``on_optimizer_step``, after the optimizer step and before the gradients are zeroed
    (the gradient rule reads them). Frozen dropout and norm layers stay at inference through the Trainer's
    ``model.train()`` calls. The frozen prefix runs without autograd when the model takes its input as its
    first positional argument; Hugging Face models take keywords (``input_ids=``), so for them only the
    frozen groups' backward, gradients and optimizer state are saved. Under DDP the Trainer's wrapper is not
    rebuilt: the next forward after a freeze raises :class:`~freezable.DDPFreezeStateError`.

    Args:
        freezing: a :class:`~freezable.ProgressiveFreezing`, or the rule (``"schedule"`` or ``"gradient"``).
        model: the Freezable to freeze; default: found in the Trainer's model when training begins.
        **settings: the ProgressiveFreezing's keyword arguments, when ``freezing`` is a rule.

    Raises:
        FreezableError: an unknown rule or a bad setting (at once), or no single Freezable is found.
    """

    def __init__(self, freezing: ProgressiveFreezing | str = "schedule", *, model: Freezable | None = None,
                 **settings: Any) -> None:
        if isinstance(freezing, ProgressiveFreezing):
            if settings or model is not None:
                raise FreezableError("model= and settings apply to a rule, not to a ProgressiveFreezing built already")
        else:
            check_options(freezing, settings)
        if model is not None and not isinstance(model, Freezable):
            raise type_error("ProgressiveFreezingCallback's model", model, "a Freezable model or None",
                             fix="make it one in place: fz.freezable(model)")
        self.freezing = freezing if isinstance(freezing, ProgressiveFreezing) else None
        self._rule = freezing if isinstance(freezing, str) else None
        self._model = model
        self._settings = settings

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        if self.freezing is None:
            target = self._model
            if target is None:
                if model is None:
                    raise FreezableError("ProgressiveFreezingCallback got no model from the Trainer; pass model=")
                target = _find_freezable(model, "ProgressiveFreezingCallback")
            settings = dict(self._settings)
            if self._rule == "schedule" and settings.get("total_steps") is None:
                settings["total_steps"] = max(1, int(state.max_steps))
            settings.setdefault("optimizer", optimizer)
            self.freezing = ProgressiveFreezing(target, self._rule, **settings)
        elif self.freezing.optimizer is None:
            self.freezing.optimizer = optimizer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: torch.optim.Optimizer | None = None,
                          **kwargs: Any) -> None:
        if self.freezing is not None:
            self.freezing.step(optimizer=optimizer if self.freezing.optimizer is None else None)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.freezing is None else self.freezing.state_dict()


class _Probe(Freezable, nn.Module):
    """A model with no groups: lets the constructor check epochs before the real model is known."""


def _extend_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Gives an LR scheduler the groups added to its optimizer since it was built, at its current factor."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    if not isinstance(base_lrs, list) or not base_lrs:
        return
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for group in optimizer.param_groups[len(base_lrs):]:
        base = group.setdefault("initial_lr", group["lr"])
        base_lrs.append(base)
        if isinstance(lambdas, list) and lambdas:
            lambdas.append(lambdas[0])
            group["lr"] = base * lambdas[0](scheduler.last_epoch)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
