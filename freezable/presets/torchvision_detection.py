"""torchvision's ``trainable_backbone_layers=N`` rule, as groups for the detection presets.

torchvision freezes the first layers of a detector's body when it builds it (``_resnet_fpn_extractor``
for ResNet bodies, N = 0..5; ``_mobilenet_extractor`` for MobileNet bodies, N = 0..6). The presets
``torchvision.detection.trainable_backbone_layers_N`` freeze exactly those parameters on a detector
built without that argument, as the group ``frozen_backbone_layers``; the detected groups come along.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..detect import detect_groups
from ..errors import PresetError

__all__ = ["trainable_backbone_layers", "FROZEN"]

FROZEN = "frozen_backbone_layers"
_RESNET_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def trainable_backbone_layers(n: int) -> Callable[[nn.Module], dict[str, tuple[str, ...]]]:
    """The groups function of the preset for ``trainable_backbone_layers=n``.

    Example:
        >>> import torch, torchvision
        >>> with torch.device("meta"):
        ...     model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights_backbone=None)
        >>> trainable_backbone_layers(3)(model)[FROZEN]
        ('backbone.body.conv1', 'backbone.body.bn1', 'backbone.body.layer1')
    """

    def groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
        body = _body(model)
        children = dict(body.named_children())
        if "conv1" in children and "layer4" in children:
            frozen = _resnet_frozen(body, n)
        elif any(getattr(c, "_is_cn", None) is not None for c in children.values()):
            frozen = _mobilenet_frozen(body, n)
        else:
            raise PresetError(f"trainable_backbone_layers_{n} knows ResNet and MobileNet bodies; "
                              f"{type(model).__name__}'s body is a {type(body).__name__} of neither shape")
        return {**detect_groups(model), FROZEN: tuple(f"backbone.body.{name}" for name in frozen)}

    return groups


def _body(model: nn.Module) -> nn.Module:
    body = getattr(getattr(model, "backbone", None), "body", None)
    if not isinstance(body, nn.Module):
        raise PresetError(f"trainable_backbone_layers presets fit torchvision detectors with a backbone.body "
                          f"(Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS), not {type(model).__name__}")
    return body


def _resnet_frozen(body: nn.Module, n: int) -> list[str]:
    """``_resnet_fpn_extractor``: parameters outside the last ``n`` of layer4..layer1, conv1 are frozen."""
    if not 0 <= n <= 5:
        raise PresetError(f"trainable_backbone_layers_{n}: a ResNet body takes N in 0..5, not {n}")
    trained = list(_RESNET_LAYERS[:n]) + (["bn1"] if n == 5 else [])
    return [name for name, child in body.named_children()
            if any(True for _ in child.parameters()) and not any(name.startswith(t) for t in trained)]


def _mobilenet_frozen(body: nn.Module, n: int) -> list[str]:
    """``_mobilenet_extractor``: the blocks before the ``n``-th stage from the end are frozen."""
    blocks = list(body.named_children())
    stage_indices = [0] + [i for i, (_, b) in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    num_stages = len(stage_indices)
    if not 0 <= n <= num_stages:
        raise PresetError(f"trainable_backbone_layers_{n}: this MobileNet body takes N in 0..{num_stages}, not {n}")
    freeze_before = len(blocks) if n == 0 else stage_indices[num_stages - n]
    return [name for name, _ in blocks[:freeze_before]]
