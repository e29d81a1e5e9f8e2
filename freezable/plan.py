"""What ``trainable``, ``preset`` and ``norm_eval`` mean, in one place for both forms.

``FrozenBackbone(model, trainable, preset, norm_eval=...)`` and ``fz.freeze(model, trainable,
preset, norm_eval=...)`` take the same arguments with the same meaning: :func:`make_plan`
resolves them against the model (validating everything, changing nothing) and
:func:`carry_out` applies the result to a :class:`~freezable.Freezable` whose freeze root is
that model.

* Without ``preset``: the groups are the model's own (a Freezable's registered groups) or the
  detected ones, and everything but ``trainable`` is frozen.
* With ``preset``: its groups are registered and its ``frozen`` groups frozen, less ``trainable``.
* ``trainable`` entries are group names or specs (:mod:`freezable.groups`); parameters the model
  was built with frozen stay frozen (a warning names them).
* ``norm_eval``: ``None`` takes the preset's setting (off without one); ``True``/``False`` override it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import _state
from .detect import detect_groups, removed_groups
from .errors import SpecError, type_error
from .groups import Group, resolve_group
from .mixin import Freezable, warn_built_frozen
from .presets import Preset, get_preset, hold_body_norms, install_preset, resolve_preset

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
    own = _own_groups(model)
    if preset is not None:
        preset = get_preset(preset)
        groups = resolve_preset(preset, root)
    elif own:
        groups = own
    else:
        groups = {name: resolve_group(root, name, names) for name, names in detect_groups(root).items()}
    known = {**own, **groups}
    kept = tuple(known[t] if isinstance(t, str) and t in known else _trainable_spec(root, t, known)
                 for t in trainable)
    return Plan(groups=groups, preset=preset, trainable=tuple(trainable), kept=kept, norm_eval=norm_eval)


def _own_groups(model: nn.Module) -> dict[str, Group]:
    """A Freezable's registered groups (resolving its class-level ones), or none."""
    if not isinstance(model, Freezable):
        return {}
    return {name: model.freeze_group(name) for name in model.freeze_group_names}


def _trainable_spec(root: nn.Module, spec: Any, groups: dict[str, Group]) -> Group:
    try:
        return resolve_group(root, "trainable", spec)
    except SpecError as e:
        removed = removed_groups(root).get(spec) if isinstance(spec, str) and spec not in groups else None
        if removed:
            what = ", ".join(f"{m!r} is {type(root.get_submodule(m)).__name__}" if _is_module(root, m) else repr(m)
                             for m in removed)
            raise SpecError(
                f"trainable entry {spec!r}: {type(root).__name__} has no group {spec!r} any more: its members hold no "
                f"parameter ({what}), so the classifier was removed and {spec!r} would train nothing; train the new "
                f"head outside the model (nn.Sequential(FrozenBackbone(model), new_head)) or put it in place of "
                f"{removed[0]!r}; groups: {list(groups)}"
            ) from None
        if isinstance(spec, str) and groups:  # a typo of a group name is likelier than of a module name
            close = [g for g in groups if g.endswith(f".{spec}")]  # a plain name on a model of several parts
            close = close or difflib.get_close_matches(spec, list(groups), n=3, cutoff=0.5)
            if close:
                raise SpecError(
                    f"trainable entry {spec!r} is neither a group nor a submodule or parameter name; did you mean "
                    f"the group {' or '.join(repr(c) for c in close)}? groups: {list(groups)}"
                ) from None
            raise SpecError(f"{e}; groups: {list(groups)}") from None
        raise


def carry_out(model: Freezable, plan: Plan, call: str) -> Freezable:
    """Registers the plan's groups on ``model``, freezes as planned and keeps ``trainable`` trainable.

    Args:
        model: a Freezable whose freeze root is the model the plan was made for.
        plan: from :func:`make_plan`.
        call: how the user made the call, for the built-frozen warning (``"FrozenBackbone(...)"``).

    Returns:
        ``model``.
    """
    if plan.preset is None:
        _state.store_groups(model, {**_own_groups(model), **plan.groups})  # type: ignore[arg-type]
        model.freeze()
        if plan.norm_eval:
            hold_body_norms(model)
    else:
        install_preset(model, plan.preset, plan.groups, norm_eval=plan.norm_eval)
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
