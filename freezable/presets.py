"""The preset registry: named recipes of freeze groups and what they freeze by default.

One dict, one register function, a sorted listing with a glob, data-only entries.
A preset whose ``groups`` is ``None`` uses the groups that
:func:`freezable.detect.detect_groups` finds in the model (``stem``, ``stage1`` ...
``stageN``, ``head``, ``backbone``), so one preset serves every model of a source; a
callable ``groups`` computes them from the model (torchvision's detection rule).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from ._state import freeze_root, norm_eval_members, store_groups
from .detect import detect_groups
from .detect.trainable_layers import FROZEN, trainable_backbone_layers
from .detect.yolo_freeze import FROZEN_LAYERS, MAX_FREEZE, freeze_layers
from .errors import PresetError, SpecError, closest, type_error
from .groups import Group, as_spec_list, resolve_group
from .mixin import Freezable
from .norms import has_running_stats

__all__ = [
    "Preset",
    "register_preset",
    "get_preset",
    "list_presets",
    "apply_preset",
    "resolve_preset",
    "install_preset",
    "hold_body_norms",
]


@dataclass(frozen=True)
class Preset:
    """A named freezing recipe.

    Example:
        >>> Preset("my.first_conv", "freeze the first conv", {"conv1": "conv1"}, frozen=("conv1",)).frozen
        ('conv1',)
    """

    name: str  # registry key, "<source>.<family or scope>.<recipe>"
    description: str  # one line, shown by `freezable presets`
    # group name -> spec(s), in forward order; None: detected groups; a callable: model -> such a mapping
    groups: Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] | None = None
    frozen: tuple[str, ...] = ()  # the groups frozen by default
    train_bn: bool = False  # keep the frozen groups' norm layers trainable
    norm_eval: bool = False  # hold the body's norms with running statistics in eval, trainable or not (mmdetection)

    def __post_init__(self) -> None:
        for field_name in ("name", "description"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise type_error(f"Preset {field_name}", value, "a non-empty str")
        if self.groups is not None and not isinstance(self.groups, Mapping) and not callable(self.groups):
            raise type_error("Preset groups", self.groups, "a mapping of group name to specs, a callable, or None")
        if not isinstance(self.frozen, (tuple, list)) or not all(isinstance(v, str) for v in self.frozen):
            hint = f"did you mean ({self.frozen!r},)?" if isinstance(self.frozen, str) else ""
            raise type_error("Preset frozen", self.frozen, "a tuple of str", fix=hint)
        if not isinstance(self.train_bn, bool):
            raise type_error("Preset train_bn", self.train_bn, "a bool")
        if not isinstance(self.norm_eval, bool):
            raise type_error("Preset norm_eval", self.norm_eval, "a bool")
        if isinstance(self.groups, Mapping):
            object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        object.__setattr__(self, "frozen", tuple(self.frozen))
        if isinstance(self.groups, Mapping):
            missing = [g for g in self.frozen if g not in self.groups]
            if missing:
                raise PresetError(
                    f"preset {self.name!r} freezes groups it does not define: {missing}; "
                    f"{closest(missing[0], self.groups)}"
                )


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Adds ``preset`` to the registry.

    Raises:
        PresetError: a preset of that name is already registered.
    """
    if not isinstance(preset, Preset):
        raise type_error("register_preset's argument", preset, "a Preset")
    if preset.name in _PRESETS:
        raise PresetError(f"a preset named {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        PresetError: no such preset (the message names the closest ones).

    Example:
        >>> get_preset("torchvision.alexnet.classifier_only").frozen
        ('features',)
    """
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str):
        raise type_error("a preset name", name, "a str")
    try:
        return _PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; {closest(name, _PRESETS)}") from None


def list_presets(pattern: str = "*") -> list[str]:
    """Sorted names of the presets matching the fnmatch ``pattern``.

    Example:
        >>> list_presets("timm.hrnet.*")
        ['timm.hrnet.backbone']
    """
    if not isinstance(pattern, str):
        raise type_error("pattern", pattern, "a str", fix="an fnmatch pattern such as 'timm.*'")
    return sorted(name for name in _PRESETS if fnmatch.fnmatchcase(name, pattern))


def resolve_preset(preset: Preset | str, model: nn.Module) -> dict[str, Group]:
    """The preset's groups resolved against ``model``'s names, in group order.

    Every spec of a group the preset freezes must match; a spec of another group
    may match nothing, and a group that matches nothing is left out.

    Raises:
        PresetError: the preset does not fit the model.
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
    resolved: dict[str, Group] = {}
    for name, specs in groups.items():
        if name in preset.frozen and isinstance(specs, (tuple, list)) and not specs:  # a rule that freezes nothing here
            resolved[name] = Group(modules=())
            continue
        if name in preset.frozen:
            try:
                resolved[name] = resolve_group(model, name, specs)
            except SpecError as e:
                raise PresetError(f"preset {preset.name!r} does not fit {type(model).__name__}: {e}") from None
            continue
        fitting = [spec for spec in as_spec_list(specs) if _matches(model, name, spec)]
        if fitting:
            resolved[name] = resolve_group(model, name, fitting)
    return resolved


def _matches(model: nn.Module, group: str, spec: Any) -> bool:
    try:
        resolve_group(model, group, spec)
    except SpecError:
        return False
    return True


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
        ('features',)
    """
    if not isinstance(model, Freezable):
        raise type_error("apply_preset's model", model, "a Freezable model",
                         fix="wrap it: FrozenBackbone(model, preset=...)")
    preset = get_preset(name)
    return install_preset(model, preset, resolve_preset(preset, freeze_root(model)))


def install_preset(
    model: Freezable, preset: Preset, resolved: Mapping[str, Group], *, norm_eval: bool | None = None
) -> Freezable:
    """Registers ``resolved`` (the preset's groups, from :func:`resolve_preset`) and freezes the preset's set.

    The one place a preset is applied: :func:`apply_preset` and ``FrozenBackbone(preset=...)``
    both end here. Groups the model already has under the same name must have the same members.
    With the preset's ``norm_eval`` (or ``norm_eval=True``; ``False`` overrides the preset's),
    :func:`hold_body_norms` follows.

    Raises:
        PresetError: a group of the same name has other members (nothing is changed).
    """
    existing = {group: model.freeze_group(group) for group in model.freeze_group_names}
    for group, value in resolved.items():
        if group in existing and existing[group] != value:
            raise PresetError(
                f"preset {preset.name!r} defines group {group!r}, which the model already has with other members"
            )
    store_groups(model, {**existing, **{g: v for g, v in resolved.items() if g not in existing}})
    if preset.frozen:
        model.freeze(*preset.frozen, train_bn=preset.train_bn)
    if preset.norm_eval if norm_eval is None else norm_eval:
        hold_body_norms(model)
    return model


def body_groups(names: Iterable[str]) -> tuple[str, ...]:
    """The stem and stage groups among ``names``: the body, which norm_eval holds (mmdetection's backbone).

    Example:
        >>> body_groups(["stem", "stage1", "stage2", "head", "backbone", "block1"])
        ('stem', 'stage1', 'stage2')
    """
    return tuple(name for name in names if name == "stem" or re.fullmatch(r"stage[0-9]+", name))


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
    groups = body_groups(model.freeze_group_names)
    root = freeze_root(model)
    if groups:
        found = norm_eval_members(root, [model.freeze_group(g) for g in groups])
    else:
        found = any(has_running_stats(m) for m in root.modules())
    if found:
        model.set_norm_eval(True, *groups)
    return model


def _stages(n: int) -> tuple[str, ...]:
    return ("stem",) + tuple(f"stage{i}" for i in range(1, n + 1))


# generic recipes over the detected groups: they fit every torchvision and timm model with those groups
_LINEAR_PROBE = Preset(
    name="linear_probe",
    description="the whole backbone frozen, norm layers held in eval; only the classifier trains",
    frozen=("backbone",),
)
_FROZEN_STAGES = tuple(
    Preset(
        name=f"frozen_stages_{n}",
        description=f"stem and {'stage 1' if n == 1 else f'stages 1-{n}'} frozen; every BatchNorm of the body held "
        f"in eval (mmdetection's frozen_stages={n}, norm_eval=True); the rest, affine parameters too, trains",
        frozen=_stages(n),
        norm_eval=True,
    )
    for n in range(1, 5)
)

_HRNET_STEM = ["conv1", "bn1", "conv2", "bn2"]
_HRNET_STAGES = {  # transition i goes with stage i, as in mmpose and in detection
    "stage1": ["layer1", "transition1"],
    "stage2": ["stage2", "transition2"],
    "stage3": ["stage3", "transition3"],
    "stage4": ["stage4"],
}

for _preset in (
    Preset(
        name="torchvision.alexnet.classifier_only",
        description="AlexNet's convolutional features frozen; the classifier trains",
        groups={"features": "features", "avgpool": "avgpool", "classifier": "classifier"},
        frozen=("features",),
    ),
    Preset(
        name="timm.hrnet.backbone",
        description="HRNet's stem and four stages frozen, BatchNorm held in eval; the rest trains",
        groups={
            "stem": _HRNET_STEM,
            **_HRNET_STAGES,
            "head": ["incre_modules", "downsamp_modules", "final_layer", "classifier"],
            "backbone": _HRNET_STEM + [spec for specs in _HRNET_STAGES.values() for spec in specs],
        },
        frozen=_stages(4),
    ),
    _LINEAR_PROBE,
    *_FROZEN_STAGES,
    # the generic recipes under their former per-library names, kept as aliases
    *(
        Preset(name=f"{source}.{p.name}", description=f"alias of {p.name}: {p.description}", frozen=p.frozen,
               norm_eval=p.norm_eval)
        for source in ("timm", "torchvision")
        for p in (_LINEAR_PROBE, *_FROZEN_STAGES)
    ),
    *(
        Preset(
            name=f"torchvision.detection.trainable_backbone_layers_{n}",
            description=f"what torchvision's trainable_backbone_layers={n} freezes in a detector's body "
            f"(ResNet: N=0..5, MobileNet: N=0..6); every BatchNorm of the body held in eval (norm_eval, as "
            f"torchvision's FrozenBatchNorm2d body); the rest trains",
            groups=trainable_backbone_layers(n),
            frozen=(FROZEN,),
            norm_eval=True,
        )
        for n in range(0, 7)
    ),
    Preset(
        name="smp.freeze_encoder",
        description="what segmentation_models_pytorch's model.freeze_encoder() freezes: the whole encoder, its norm "
        "layers held in eval; the decoder and the heads train",
        frozen=("encoder",),
    ),
    *(
        Preset(
            name=f"ultralytics.freeze_{n}",
            description=f"what the ultralytics trainer's freeze={n} freezes: "
            + ("" if n == 0 else "layer model.0 and " if n == 1 else f"layers model.0 ... model.{n - 1} and ")
            + "the DFL conv (always), their BatchNorm held in eval; the rest trains",
            groups=freeze_layers(n),
            frozen=(FROZEN_LAYERS,),
        )
        for n in range(0, MAX_FREEZE + 1)
    ),
):
    register_preset(_preset)
