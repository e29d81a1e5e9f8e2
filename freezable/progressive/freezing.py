"""Progressive freezing: :class:`ProgressiveFreezing` freezes the staged groups front to back while a model trains.

Layers near the input settle first in fine-tuning. Once one is frozen, a training step skips its
weight gradients, its optimizer update and the backward through it, and (when everything before it
is frozen too) its autograd bookkeeping in the forward. Two rules decide when each group freezes:

* ``"schedule"`` (FreezeOut, Brock et al. 2017): the ``i``-th of the ``K`` groups to freeze (``i`` from 0)
  is frozen after ``round(t_i * total_steps)`` optimizer steps, with ``t_i = start + (1 - start) * i / K``
  (``spacing="linear"``) or that cubed (``"cubic"``, FreezeOut's best setting with ``start=0.8``:
  the first group at 51% of the run);
* ``"gradient"`` (AutoFreeze, Liu et al. 2021): every ``window`` steps, each trainable group's mean
  gradient norm over the window is compared with the previous window's; the groups from the front whose
  relative change ``|now - before| / before`` is below ``threshold`` are frozen, stopping at the first
  that is not: never a group after a trainable one.

The groups are the model's *staged* groups in group order, the walk of ``freeze_to`` and
``UnfreezeSchedule`` (:func:`freezable.stages.walk_units`: what an umbrella holds outside its staged
groups goes with its last one), from the first that trains up to ``until`` (default: all but the
last, the head). Freezing one goes through the model's own freezing (as ``freeze`` does), so
everything freezing guarantees holds: frozen norms held in eval, ``fz.check`` clean, a DDP wrapper told
to rebuild (``step`` returns what it froze: ``ddp = fz.rewrap_ddp(ddp)`` then). The optimizer's state
for the frozen parameters is released (:func:`freezable.optim.release_optimizer_state`), and, with
``inference_prefix`` (the default), once the frozen groups form a true prefix of the forward it runs
without autograd, its outputs optionally cached (:mod:`freezable.progressive.prefix`).

Where the state lives: what is frozen is the model's freeze state; this object keeps the rule's
settings, the step count, when each group froze and the gradient rule's running sums, all in
:meth:`ProgressiveFreezing.state_dict` (plain data, ``torch.load(weights_only=True)``-safe).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import guard as _guard
from .._state import check_state, freeze_root, group_is_frozen
from ..cache.checks import check_cap
from ..errors import FreezableError, FreezeStateError, closest, type_error, unknown_group
from ..groups import Group
from ..mixin import Freezable
from ..optim import check_optimizer, keeps_one_history, release_optimizer_state
from ..stages import units_within, walk_units
from .prefix import PrefixRunner
from .settings import check_settings

__all__ = ["ProgressiveFreezing"]

_STATE_FORMAT = "freezable.progressive_freezing"
_STATE_VERSION = 1


def _check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise type_error(what, value, "a bool")
    return value


class ProgressiveFreezing:
    """Freezes the model's staged groups front to back during training, by a schedule or by gradient norms.

    Call :meth:`step` after every optimizer step. See :mod:`freezable.progressive.freezing` for the two rules.

    Args:
        model: a :class:`~freezable.Freezable` (a mixin model, an ``fz.freeze``/``fz.freezable`` model, a
            ``FrozenBackbone``), trainable where it is to be frozen progressively.
        rule: ``"schedule"`` (FreezeOut) or ``"gradient"`` (AutoFreeze).
        optimizer: its state for the parameters frozen is released at each freeze (a ``step(optimizer=...)``
            overrides it); ``None``: nothing is released.
        total_steps: (``"schedule"``) the optimizer steps of the whole run.
        start: (``"schedule"``) FreezeOut's ``t_0``: the fraction of the run at which the first group freezes
            (cubed with ``"cubic"``); default 0.5.
        spacing: (``"schedule"``) ``"linear"`` (default) or ``"cubic"``.
        window: (``"gradient"``) steps over which gradient norms are averaged; default 20.
        threshold: (``"gradient"``) the relative change of a group's mean gradient norm between two windows
            below which it freezes; default 0.1.
        until: the last staged group that may be frozen (an umbrella such as ``"stage3"`` means its last
            staged group); default: all but the last staged group.
        guard: fingerprint each group when it freezes (``freeze(..., guard=True)``), so that ``fz.check``
            names any of its tensors that changes later.
        inference_prefix: once the frozen groups are a true prefix of the forward, run them without autograd
            (see :mod:`freezable.progressive.prefix`).
        cache: also cache the prefix's outputs per sample, for forwards run inside :meth:`cache_keys`
            (fixed inputs only: no random augmentation).
        cache_max_bytes: the cache's memory cap (``None``: none).
        verify_inputs: the cache refuses a known key with another input (``FeatureCache(verify_inputs=True)``).

    Raises:
        FreezableTypeError: ``model`` is not a Freezable, or an argument has the wrong type.
        FreezableError: an unknown rule or spacing, a setting of the other rule, ``total_steps`` missing for
            ``"schedule"``, a value out of range, ``until`` leaving no group to train, a model with fewer
            than two staged groups, an ``LBFGS`` optimizer, or ``cache`` without ``inference_prefix``.
        UnknownGroupError: ``until`` names a group the model lacks.

    Example:
        >>> import torch, freezable as fz
        >>> from torch import nn
        >>> class Net(fz.Freezable, nn.Sequential):
        ...     freeze_groups = {"stem": "0", "body": "1", "head": "2"}
        >>> net = Net(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        >>> freezing = fz.ProgressiveFreezing(net, "schedule", optimizer=opt, total_steps=10)
        >>> freezing.planned_steps
        {'stem': 5, 'body': 8}
        >>> for step in range(10):
        ...     opt.zero_grad(); net(torch.randn(16, 4)).sum().backward(); opt.step()
        ...     if frozen := freezing.step():
        ...         print(step + 1, frozen, net.frozen_groups, len(opt.state))
        5 ['stem'] ('stem',) 4
        8 ['body'] ('stem', 'body') 2
    """

    def __init__(
        self,
        model: Freezable,
        rule: str = "schedule",
        *,
        optimizer: torch.optim.Optimizer | None = None,
        total_steps: int | None = None,
        start: float | None = None,
        spacing: str | None = None,
        window: int | None = None,
        threshold: float | None = None,
        until: str | None = None,
        guard: bool = False,
        inference_prefix: bool = True,
        cache: bool = False,
        cache_max_bytes: int | None = None,
        verify_inputs: bool = False,
    ) -> None:
        if not isinstance(model, Freezable):
            raise type_error("ProgressiveFreezing's model", model, "a Freezable model",
                             fix="make it one in place: fz.freezable(model), or wrap it: fz.FrozenBackbone(model, "
                                 "trainable=[...])")
        given = {"total_steps": total_steps, "start": start, "spacing": spacing, "window": window,
                 "threshold": threshold}
        self.rule, self.settings = check_settings(rule, {k: v for k, v in given.items() if v is not None})
        if optimizer is not None:
            _check_releasable(optimizer)
        self.guard = _check_bool(guard, "guard")
        _check_bool(inference_prefix, "inference_prefix")
        _check_bool(cache, "cache")
        _check_bool(verify_inputs, "verify_inputs")
        if cache and not inference_prefix:
            raise FreezableError("cache=True caches the frozen prefix that inference_prefix=True runs; "
                                 "pass inference_prefix=True too")
        check_cap("cache_max_bytes", cache_max_bytes)
        self.model = model
        self.until = until
        self._units = _units(model, until)
        self.optimizer = optimizer
        self.steps = 0
        self.frozen_at: dict[str, int] = {}  # group -> the step after which it was frozen
        root = freeze_root(model)
        self._first = next((i for i, (_, groups) in enumerate(self._units)
                            if not all(group_is_frozen(root, g) for g in groups)), len(self._units))
        self._params = [_unit_parameters(root, groups) for _, groups in self._units]
        self._sums: dict[str, torch.Tensor] = {}  # gradient rule: sum of the window's norms, per group
        self._counts: dict[str, int] = {}
        self._previous: dict[str, float] = {}  # gradient rule: the previous window's mean norm, per group
        self.runner = (PrefixRunner(root, cache=cache, cache_max_bytes=cache_max_bytes, verify_inputs=verify_inputs)
                       if inference_prefix else None)
        if self.runner is not None and self._first:
            self.runner.invalidate()

    def __repr__(self) -> str:
        upcoming = self._next_index()
        nxt = f", next={self.groups[upcoming]!r}" if upcoming < len(self.groups) else ""
        if nxt and self.rule == "schedule":
            nxt += f" after step {self.planned_steps[self.groups[upcoming]]}"
        return (f"ProgressiveFreezing(rule={self.rule!r}, steps={self.steps}, frozen={list(self.frozen_at)}"
                f"{nxt})")

    # -- what it walks ------------------------------------------------------------------------------------

    @property
    def groups(self) -> tuple[str, ...]:
        """The staged groups it may freeze, in order (those frozen before it started included)."""
        return tuple(name for name, _ in self._units)

    @property
    def planned_steps(self) -> dict[str, int]:
        """(``"schedule"``) each group still to freeze when it started -> the step after which it freezes."""
        if self.rule != "schedule":
            return {}
        names = self.groups[self._first:]
        total, start, cubic = self.settings["total_steps"], self.settings["start"], self.settings["spacing"] == "cubic"
        plan = {}
        for i, name in enumerate(names):
            t = start + (1 - start) * i / len(names)
            plan[name] = max(1, round((t ** 3 if cubic else t) * total))
        return plan

    @property
    def prefix(self) -> str:
        """What runs without autograd now, or why nothing does (one line)."""
        return "off (inference_prefix=False)" if self.runner is None else self.runner.note

    def _next_index(self) -> int:
        return self._first + len(self.frozen_at)

    @contextlib.contextmanager
    def cache_keys(self, keys: Sequence[Hashable] | torch.Tensor) -> Iterator[None]:
        """Forwards inside look the frozen prefix's outputs up by these sample keys (``cache=True``).

        One key per sample of the batch (its dataset index, say), each always with the same input.

        Raises:
            FreezableError: the object was created without ``cache=True``.
        """
        if self.runner is None or not self.runner.cache:
            raise FreezableError("cache_keys needs ProgressiveFreezing(..., cache=True)")
        with self.runner.keys(keys):
            yield

    def close(self) -> None:
        """Stops running the prefix without autograd (removes the hooks); the freeze state stays."""
        if self.runner is not None:
            self.runner.close()

    # -- stepping --------------------------------------------------------------------------------------

    def step(self, *, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Counts one optimizer step and freezes the groups due; call it after ``optimizer.step()``.

        The gradient rule reads the gradients, so call it before they are zeroed.

        Args:
            optimizer: overrides the optimizer whose state is released.

        Returns:
            The groups frozen by this call, in order (empty when none): a DDP wrapper must be rebuilt
            then (``ddp = fz.rewrap_ddp(ddp)``).
        """
        if optimizer is not None:
            _check_releasable(optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.steps += 1
        first = self._next_index()
        if self.rule == "schedule":
            plan = self.planned_steps
            due = [i for i in range(first, len(self._units)) if plan[self.groups[i]] <= self.steps]
            due = [i for n, i in enumerate(due) if i == first + n]  # contiguous from the front
        else:
            self._observe(first)
            due = self._decide(first) if self.steps % self.settings["window"] == 0 else []
        if due:
            self._freeze(due, optimizer)
        return [self.groups[i] for i in due]

    def _observe(self, first: int) -> None:
        """Adds each trainable group's gradient norm of this step to its window's sum."""
        for i in range(first, len(self._units)):
            grads = [p.grad.detach() for p in self._params[i] if p.requires_grad and p.grad is not None]
            if not grads:
                continue
            device = grads[0].device
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(device, torch.float64)
                                                         for g in grads]))
            name = self.groups[i]
            if name in self._sums:
                self._sums[name] = self._sums[name] + norm
            else:
                self._sums[name] = norm
            self._counts[name] = self._counts.get(name, 0) + 1

    def _decide(self, first: int) -> list[int]:
        """At the end of a window: the groups from the front whose mean gradient norm changed less than the threshold."""
        means = {name: self._sums[name].item() / self._counts[name] for name in self._sums if self._counts.get(name)}
        due = []
        for i in range(first, len(self._units)):
            name = self.groups[i]
            before, now = self._previous.get(name), means.get(name)
            if before is None or now is None or not math.isfinite(now) or before <= 0:
                break
            if not abs(now - before) / before < self.settings["threshold"]:
                break
            due.append(i)
        self._previous = {name: mean for name, mean in means.items() if math.isfinite(mean)}
        self._sums, self._counts = {}, {}
        return due

    def _freeze(self, indices: list[int], optimizer: torch.optim.Optimizer | None) -> None:
        groups = [g for i in indices for g in self._units[i][1]]
        self.model._freeze_resolved(groups)
        if self.guard:
            _guard.record(self.model, groups)
        if optimizer is not None:
            release_optimizer_state(optimizer, self.model)  # type: ignore[arg-type]
        for i in indices:
            name = self.groups[i]
            self.frozen_at[name] = self.steps
            self._sums.pop(name, None)
            self._counts.pop(name, None)
            self._previous.pop(name, None)
        if self.runner is not None:
            self.runner.invalidate()

    # -- resuming ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The rule, its settings, the step count, when each group froze, the gradient rule's sums and the
        model's freeze state: plain data (``torch.load(weights_only=True)`` loads it)."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "rule": self.rule,
            "settings": dict(self.settings),
            "until": self.until,
            "groups": list(self.groups),
            "first": self._first,
            "steps": self.steps,
            "frozen_at": dict(self.frozen_at),
            "gradient": {"sums": {k: v.item() for k, v in self._sums.items()}, "counts": dict(self._counts),
                         "previous": dict(self._previous)},
            "freeze_state": self.model.freeze_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved, the model's freeze state included; the run goes on exactly.

        Load the optimizer's state as saved too (it holds no state for the frozen parameters).

        Raises:
            FreezeStateError: ``state`` is malformed, or does not fit the model (other groups); nothing is changed.
        """
        if not isinstance(state, Mapping) or (state.get("format"), state.get("version")) != (_STATE_FORMAT,
                                                                                          _STATE_VERSION):
            raise FreezeStateError(f"not a ProgressiveFreezing state of version {_STATE_VERSION}: {state!r:.200}")
        root = freeze_root(self.model)
        try:
            rule, settings = check_settings(state["rule"], state["settings"])
            units = _units(self.model, state["until"])
            names = [name for name, _ in units]
            if state["groups"] != names:
                raise FreezableError(f"it walks the groups {state['groups']}, the model {names}")
            first, steps, frozen_at = state["first"], state["steps"], state["frozen_at"]
            if not all(type(v) is int for v in (first, steps)) or not 0 <= first <= len(names) or steps < 0:
                raise FreezableError(f"first={first!r} and steps={steps!r} must be ints in range")
            if (not isinstance(frozen_at, Mapping) or list(frozen_at) != names[first:first + len(frozen_at)]
                    or not all(type(s) is int and 0 <= s <= steps for s in frozen_at.values())):
                raise FreezableError(f"frozen_at must map the groups after the first {first} to steps, got "
                                     f"{frozen_at!r}")
            gradient = state["gradient"]
            sums, counts, previous = gradient["sums"], gradient["counts"], gradient["previous"]
            for what, values, kind in (("sums", sums, float), ("counts", counts, int), ("previous", previous, float)):
                if not isinstance(values, Mapping) or not all(n in names and isinstance(v, kind) and type(v) is not bool
                                                              for n, v in values.items()):
                    raise FreezableError(f"gradient {what} must map group names to {kind.__name__}s, got {values!r}")
            check_state(root, state["freeze_state"])
        except (KeyError, TypeError, FreezableError) as e:
            raise FreezeStateError(f"bad ProgressiveFreezing state: {e}") from None
        self.model.load_freeze_state(state["freeze_state"])  # checks the rest; changes nothing if it raises
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))  # type: ignore[attr-defined]
        self.rule, self.settings, self.until, self._units = rule, settings, state["until"], units
        self._params = [_unit_parameters(root, groups) for _, groups in units]
        self._first, self.steps, self.frozen_at = first, steps, dict(frozen_at)
        self._sums = {n: torch.tensor(v, dtype=torch.float64, device=_device(self._params[names.index(n)], device))
                      for n, v in sums.items()}
        self._counts, self._previous = dict(counts), dict(previous)
        frozen = [g for name, groups in units if name in self.frozen_at for g in groups]
        if self.guard and frozen:
            _guard.record(self.model, frozen)
        if self.optimizer is not None:
            release_optimizer_state(self.optimizer, self.model)  # type: ignore[arg-type]
        if self.runner is not None:
            self.runner.invalidate()


def _units(model: Freezable, until: object) -> list[tuple[str, list[Group]]]:
    """The staged units that may be frozen: from the first up to ``until``'s last (default: all but the last)."""
    root = freeze_root(model)
    groups = model.freeze_group_map
    units = walk_units(root, groups)
    if len(units) < 2:
        raise FreezableError(
            f"ProgressiveFreezing needs a model with at least two staged groups (some to freeze, the last to train); "
            f"{type(model).__name__} has {[name for name, _ in units] or 'none'}: register its groups in forward "
            f"order, e.g. model.register_freeze_group('stem', 'conv1')"
        )
    if until is None:
        return units[:-1]
    if not isinstance(until, str):
        raise type_error("until", until, "a group name or None")
    if until not in groups:
        raise unknown_group(until, groups, type(model).__name__)
    inside = units_within(root, groups, until, units)
    if not inside:
        raise FreezableError(f"until={until!r} holds no staged group; {closest(until, [n for n, _ in units])}")
    if inside[-1] == len(units) - 1:
        raise FreezableError(f"until={until!r} would freeze every staged group, the last ({units[-1][0]!r}) too, and "
                             f"leave nothing to train; name an earlier group, such as {units[-2][0]!r}")
    return units[:inside[-1] + 1]


def _unit_parameters(root: nn.Module, groups: list[Group]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for group in groups:
        for _, p in group.named_parameters(root):
            seen.setdefault(id(p), p)
    return list(seen.values())


def _device(params: list[nn.Parameter], default: torch.device) -> torch.device:
    return params[0].device if params else default


def _check_releasable(optimizer: object) -> None:
    check_optimizer(optimizer)
    if keeps_one_history(optimizer):
        raise FreezableError("ProgressiveFreezing cannot release part of an LBFGS's state (one history spans all its "
                             "parameters); use another optimizer, or optimizer=None and a new LBFGS after each freeze")
