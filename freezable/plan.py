"""What ``trainable``, ``preset`` and ``norm_eval`` mean, in one place for both forms.

``FrozenBackbone(model, trainable, preset, norm_eval=...)`` and ``fz.freeze(model, trainable,
preset, norm_eval=...)`` take the same arguments with the same meaning: :func:`make_plan`
resolves them against the model (validating everything, changing nothing) and
:func:`carry_out` applies the result to a :class:`~freezable.Freezable` whose freeze root is
that model.

* Without ``preset``: the groups are the model's own (a Freezable's registered groups) or the
  detected ones, and everything but ``trainable`` is frozen.
* With ``preset``: its groups are registered and its ``frozen`` groups frozen, less ``trainable``.
* ``trainable`` entries are read as ``Freezable.freeze`` reads names (:func:`freezable.groups.select`):
  group names first, then specs; parameters the model was built with frozen stay frozen (a warning
  names them).
* Every form ends in :func:`freezable.presets.install`: the groups go through the mixin's one
  registration step, then the freeze; ``fz.freezable(model)`` registers the detected groups alone.
* ``norm_eval``: ``None`` takes the preset's setting (off without one); ``True``/``False`` override it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import _state
from .detect import detect_groups, removed_groups
from .errors import UnknownNameError, type_error
from .groups import Group, resolve_groups, select
from .mixin import Freezable, warn_built_frozen
from .presets import Preset, get_preset, install, resolve_preset

__all__ = ["Plan", "make_plan", "carry_out"]


@dataclass(frozen=True)
class Plan:
    """A freeze, resolved: what :func:`carry_out` does to a model."""

    groups: dict[str, Group]  # the groups to register (those the model has, or the detected or the preset's)
    preset: Preset | None  # the preset whose frozen set is frozen; None: everything is frozen
    trainable: tuple[Any, ...]  # the trainable entries as given (for messages)
    kept: tuple[Group, ...]  # what stays trainable, resolved
    norm_eval: bool | None  # None: the preset's setting


def make_plan(
    model: nn.Module, trainable: object = (), preset: str | Preset | None = None, norm_eval: bool | None = None
) -> Plan:
    """Resolves the arguments against ``model`` (its freeze root, when it is a Freezable); changes nothing.

    Raises:
        PresetError: unknown preset, or one that does not fit.
        SpecError: a ``trainable`` entry is neither a group nor a spec that matches.
        FreezableTypeError: ``norm_eval`` is not a bool or ``None``.
    """
    if norm_eval is not None and not isinstance(norm_eval, bool):
        raise type_error("norm_eval", norm_eval, "a bool or None", fix="None takes the preset's setting")
    if trainable is None:
        trainable = ()
    if isinstance(trainable, (str, bytes)) or not isinstance(trainable, Sequence):
        trainable = [trainable]
    root = _state.freeze_root(model)
    own = dict(model.freeze_group_map) if isinstance(model, Freezable) else {}
    if preset is not None:
        preset = get_preset(preset)
        groups = resolve_preset(preset, root)
    elif own:
        groups = own
    else:
        groups = resolve_groups(root, detect_groups(root))
    known = {**own, **groups}
    kept = tuple(_kept(root, known, entry) for entry in trainable)
    return Plan(groups=groups, preset=preset, trainable=tuple(trainable), kept=kept, norm_eval=norm_eval)


def _kept(root: nn.Module, groups: Mapping[str, Group], entry: Any) -> Group:
    """A ``trainable`` entry as :meth:`Freezable.freeze` reads names (:func:`freezable.groups.select`); a group that
    detection leaves out because a replaced classifier emptied it is said so."""
    try:
        return select(root, groups, [entry], "trainable")[0]
    except UnknownNameError:
        removed = removed_groups(root).get(entry)
        if not removed:
            raise
        what = ", ".join(f"{m!r} is {type(root.get_submodule(m)).__name__}" if _is_module(root, m) else repr(m)
                         for m in removed)
        raise UnknownNameError(
            f"trainable entry {entry!r}: {type(root).__name__} has no group {entry!r} any more: its members hold no "
            f"parameter ({what}), so the classifier was removed and {entry!r} would train nothing; train the new "
            f"head outside the model (nn.Sequential(FrozenBackbone(model), new_head)) or put it in place of "
            f"{removed[0]!r}; groups: {list(groups)}"
        ) from None


def carry_out(model: Freezable, plan: Plan, call: str) -> Freezable:
    """Registers the plan's groups on ``model`` and freezes as planned (:func:`freezable.presets.install`), then
    keeps ``trainable`` trainable.

    Args:
        model: a Freezable whose freeze root is the model the plan was made for.
        plan: from :func:`make_plan`.
        call: how the user made the call, for the built-frozen warning (``"FrozenBackbone(...)"``).

    Returns:
        ``model``.
    """
    install(model, plan.groups, plan.preset, norm_eval=plan.norm_eval)
    if plan.kept:
        kept = model._unfreeze_resolved(list(plan.kept))  # the subclass extension point (see Freezable)
        if kept:
            names = [t for t in plan.trainable if isinstance(t, str) and t in model.freeze_group_names]
            warn_built_frozen(f"{call} with trainable={list(plan.trainable)}", kept,
                              f"then model.unfreeze({', '.join(map(repr, names)) or '...'}, built_frozen=True)")
    return model


def _is_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True
