"""Applying a preset: its groups resolved against a model, registered, and its default set frozen.

:func:`resolve_preset` reads a preset against a model (validating, changing nothing); :func:`install` is
the one step every construction ends in (``apply_preset``, ``FrozenBackbone(...)``, ``fz.freeze(...)``):
the groups registered through the mixin's one registration step, the default set frozen, and the body's
norms held under norm_eval where asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .._state import freeze_root, norm_eval_members
from ..detect import detect_groups
from ..errors import PresetError, SpecError, type_error
from ..groups import Group, part_of, resolve_groups
from ..mixin import Freezable
from ..norms import has_running_stats
from .registry import Preset, get_preset

__all__ = ["resolve_preset", "install", "apply_preset", "body_groups", "hold_body_norms"]


def resolve_preset(preset: Preset | str, model: nn.Module) -> dict[str, Group]:
    """The preset's groups resolved against ``model``'s names, in group order; each spec is resolved once.

    Every spec of a group the preset freezes must match; a spec of another group
    may match nothing, and a group that matches nothing is left out.

    Raises:
        PresetError: the preset does not fit the model.

    Example:
        >>> import torchvision
        >>> list(resolve_preset("torchvision.alexnet.classifier_only", torchvision.models.alexnet()))
        ['features', 'avgpool', 'classifier', 'head', 'backbone']
    """
    preset = get_preset(preset)
    if preset.groups is None or callable(preset.groups):
        groups: Mapping[str, Any] = detect_groups(model) if preset.groups is None else preset.groups(model)
        missing = [g for g in preset.frozen if g not in groups]
        if missing:
            raise PresetError(
                f"preset {preset.name!r} freezes {missing}, which {type(model).__name__} does not have; "
                f"its detected groups are {list(groups)}"
            )
    else:
        groups = preset.groups
    # a rule that freezes nothing on this model (an empty list of specs) still names its group
    empty = {name for name in preset.frozen if isinstance(groups[name], (tuple, list)) and not groups[name]}
    try:
        resolved = resolve_groups(model, {name: specs for name, specs in groups.items() if name not in empty},
                                  optional={name for name in groups if name not in preset.frozen})
    except SpecError as e:
        raise PresetError(f"preset {preset.name!r} does not fit {type(model).__name__}: {e}") from None
    return {name: resolved.get(name, Group(modules=())) for name in groups if name in resolved or name in empty}


def install(model: Freezable, groups: Mapping[str, Group], preset: Preset | None = None, *,
            norm_eval: bool | None = None) -> Freezable:
    """Registers ``groups`` and freezes the preset's default set (no preset: the whole model).

    The one step every construction ends in: :func:`apply_preset`, ``FrozenBackbone(...)`` and
    ``fz.freeze(...)``. The groups go through the model's one registration step: a group the model has
    already under the same name must have the same members. With the preset's ``norm_eval`` (or
    ``norm_eval=True``; ``False`` overrides the preset's), :func:`hold_body_norms` follows.

    Args:
        model: a Freezable whose freeze root the groups were resolved against.
        groups: the groups to register (the preset's, from :func:`resolve_preset`, or the detected ones).
        preset: whose ``frozen`` groups are frozen, with its ``train_bn``; ``None``: the whole model.
        norm_eval: ``None`` takes the preset's setting (off without one).

    Raises:
        PresetError: a group of the same name has other members (nothing is changed).

    Returns:
        ``model``.
    """
    if preset is None:
        model._register_groups(groups, source="detection")
        model.freeze()
    else:
        model._register_groups(groups, source=f"preset {preset.name!r}", error=PresetError)
        if preset.frozen:
            model.freeze(*preset.frozen, train_bn=preset.train_bn)
    if (preset is not None and preset.norm_eval) if norm_eval is None else norm_eval:
        hold_body_norms(model)
    return model


def apply_preset(model: Freezable, name: str | Preset) -> Freezable:
    """Registers the preset's groups on ``model`` and freezes its default set.

    Groups the model already has under the same name must resolve to the same names.

    Returns:
        ``model``.

    Raises:
        PresetError: unknown preset, or one that does not fit the model.

    Example:
        >>> import freezable as fz, torchvision
        >>> class AlexNet(fz.Freezable, torchvision.models.AlexNet): ...
        >>> fz.apply_preset(AlexNet(num_classes=10), "torchvision.alexnet.classifier_only").frozen_groups
        ('features', 'backbone')
    """
    if not isinstance(model, Freezable):
        raise type_error("apply_preset's model", model, "a Freezable model",
                         fix="wrap it: FrozenBackbone(model, preset=...)")
    preset = get_preset(name)
    return install(model, resolve_preset(preset, freeze_root(model)), preset)


def body_groups(names: Iterable[str]) -> tuple[str, ...]:
    """The stem and stage groups among ``names`` (a part's too: ``backbone.stage2``): the body, which norm_eval
    holds (mmdetection's backbone).

    Example:
        >>> body_groups(["stem", "stage1", "stage2", "head", "backbone", "block1"])
        ('stem', 'stage1', 'stage2')
        >>> body_groups(["backbone.stem", "backbone.stage1", "encoder.block1", "backbone"])
        ('backbone.stem', 'backbone.stage1')
    """
    return tuple(name for name in names if part_of(name)[1] in ("stem", "stage"))


def hold_body_norms(model: Freezable) -> Freezable:
    """Puts the body's norm layers with running statistics under norm_eval (``Preset.norm_eval``).

    The body is the stem and stage groups (:func:`body_groups`; for a detector, its backbone's body),
    or the whole model when it has none. A body without such norms (a ViT's LayerNorms) is left as it is.

    Returns:
        ``model``.

    Example:
        >>> import freezable as fz, torchvision
        >>> fb = fz.FrozenBackbone(torchvision.models.resnet18(), trainable=["stage4", "head"])
        >>> hold_body_norms(fb).train().backbone.layer4[0].bn1.training
        False
    """
    registered = model.freeze_group_map
    groups = body_groups(registered)
    root = freeze_root(model)
    if groups:
        found = norm_eval_members(root, [registered[g] for g in groups])
    else:
        found = any(has_running_stats(m) for m in root.modules())
    if found:
        model.set_norm_eval(True, *groups)
    return model
