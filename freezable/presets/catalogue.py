"""The built-in presets: what :func:`freezable.list_presets` lists before anyone registers their own.

A preset whose ``groups`` is ``None`` uses the groups that :func:`freezable.detect.detect_groups` finds in
the model (``stem``, ``stage1`` ... ``stageN``, ``head``, ``backbone``), so one preset serves every model of
a source; a callable ``groups`` computes them from the model (the recipes beside this module:
:mod:`~freezable.presets.torchvision_detection`, :mod:`~freezable.presets.open_clip`,
:mod:`~freezable.presets.ultralytics`). Numbered recipes (``frozen_stages_N``, ``ultralytics.freeze_N``)
are one family each; the per-library names of the generic presets are a table of aliases.
"""

from __future__ import annotations

from .open_clip import LOCKED_IMAGE, LOCKED_TEXT, lock_image_tower, lock_text_tower
from .registry import Alias, Preset, PresetFamily, register_preset
from .torchvision_detection import FROZEN, trainable_backbone_layers
from .ultralytics import FROZEN_LAYERS, MAX_FREEZE, freeze_layers

__all__ = ["BUILT_IN", "ALIASES"]


def _stages(n: int) -> tuple[str, ...]:
    return ("stem",) + tuple(f"stage{i}" for i in range(1, n + 1))


def _frozen_stages(n: int) -> Preset:
    return Preset(
        name=f"frozen_stages_{n}",
        description=f"stem and {'stage 1' if n == 1 else f'stages 1-{n}'} frozen; every BatchNorm of the body held "
        f"in eval (mmdetection's frozen_stages={n}, norm_eval=True); the rest, affine parameters too, trains",
        frozen=_stages(n),
        norm_eval=True,
    )


def _lock_tower(tower: str, n: int) -> Preset:
    rule, locked = (lock_image_tower, LOCKED_IMAGE) if tower == "image" else (lock_text_tower, LOCKED_TEXT)
    argument = "unlocked_groups" if tower == "image" else "unlocked_layers"
    return Preset(
        name=f"open_clip.lock_{tower}_tower_{n}",
        description=f"what open_clip's lock_{tower}_tower({argument}={n}) freezes: the {tower} tower "
        f"{f'but its last {n} group(s)' if n else 'whole'} (open_clip's order; BatchNorm of the frozen part held in "
        f"eval); the rest trains",
        groups=rule(n),
        frozen=(locked,),
    )


def _trainable_backbone_layers(n: int) -> Preset:
    return Preset(
        name=f"torchvision.detection.trainable_backbone_layers_{n}",
        description=f"what torchvision's trainable_backbone_layers={n} freezes in a detector's body "
        f"(ResNet: N=0..5, MobileNet: N=0..6); every BatchNorm of the body held in eval (norm_eval, as "
        f"torchvision's FrozenBatchNorm2d body); the rest trains",
        groups=trainable_backbone_layers(n),
        frozen=(FROZEN,),
        norm_eval=True,
    )


def _ultralytics_freeze(n: int) -> Preset:
    return Preset(
        name=f"ultralytics.freeze_{n}",
        description=f"what the ultralytics trainer's freeze={n} freezes: "
        + ("" if n == 0 else "layer model.0 and " if n == 1 else f"layers model.0 ... model.{n - 1} and ")
        + "the DFL conv (always), their BatchNorm held in eval; the rest trains",
        groups=freeze_layers(n),
        frozen=(FROZEN_LAYERS,),
    )


_HRNET_STEM = ["conv1", "bn1", "conv2", "bn2"]
_HRNET_STAGES = {  # transition i goes with stage i, as in mmpose and in detection
    "stage1": ["layer1", "transition1"],
    "stage2": ["stage2", "transition2"],
    "stage3": ["stage3", "transition3"],
    "stage4": ["stage4"],
}

BUILT_IN: tuple[Preset | PresetFamily, ...] = (
    # generic recipes over the detected groups: they fit every torchvision and timm model with those groups
    Preset(
        name="linear_probe",
        description="the whole backbone frozen, norm layers held in eval; only the classifier trains",
        frozen=("backbone",),
    ),
    PresetFamily("frozen_stages_N", range(1, 5), _frozen_stages),
    Preset(
        name="torchvision.alexnet.classifier_only",
        description="AlexNet's convolutional features frozen; the classifier trains",
        groups={"features": "features", "avgpool": "avgpool", "classifier": "classifier",
                "head": "classifier", "backbone": ["features", "avgpool"]},
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
    PresetFamily("open_clip.lock_image_tower_N", range(0, 7), lambda n: _lock_tower("image", n)),
    PresetFamily("open_clip.lock_text_tower_N", range(0, 7), lambda n: _lock_tower("text", n)),
    PresetFamily("torchvision.detection.trainable_backbone_layers_N", range(0, 7), _trainable_backbone_layers),
    Preset(
        name="smp.freeze_encoder",
        description="what segmentation_models_pytorch's model.freeze_encoder() freezes: the whole encoder, its norm "
        "layers held in eval; the decoder and the heads train",
        frozen=("encoder",),
    ),
    PresetFamily("ultralytics.freeze_N", range(0, MAX_FREEZE + 1), _ultralytics_freeze),
)

# the generic recipes under their former per-library names: alias -> name
ALIASES: dict[str, str] = {f"{source}.{name}": name for source in ("timm", "torchvision")
                           for name in ("linear_probe", "frozen_stages_N")}

for _entry in (*BUILT_IN, *(Alias(alias, name) for alias, name in ALIASES.items())):
    register_preset(_entry)
