"""Group detection: named freeze groups that are right or absent, never guessed.

:func:`detect_groups` asks each detector of :data:`DETECTORS` in turn (one per source, one file each);
the first that knows the model gives its groups. A model that none knows is searched at any depth for
models they know (:mod:`freezable.detect.nested`); what lies outside every known model is in no group.

The vocabulary, for every source (see ``_parts.py``): ``stem``, ``stage1 ... stageN`` (forward order;
together with the stem they cover the backbone: a final norm goes with the last stage),
``block1 ... blockM`` (finer, inside the stages), task parts (``neck``, ``rpn``, ``roi_heads``),
``head`` (what fine-tuning replaces), ``aux_head``, and ``backbone``, an umbrella over everything but
the heads. Libraries with parts of their own name them as the library does (smp's ``encoder`` and
``decoder``, ultralytics' ``layerN``, diffusers' ``down_blockN``): see each source's module. Detection reads names, types and settings only, so it works on the meta device.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .diffusers import diffusers_groups
from .nested import nested_groups
from .smp import smp_groups
from .timm import is_timm_features, timm_groups
from .torchvision import torchvision_groups
from .torchvision_features import torchvision_feature_groups
from .transformers import hf_groups
from .ultralytics import ultralytics_groups

__all__ = ["detect_groups", "DETECTORS"]

# One detector per source, asked in order: model -> groups, or None when the model is not of its source.
DETECTORS: list[Callable[[nn.Module], "dict[str, tuple[str, ...]] | None"]] = [
    torchvision_groups,
    timm_groups,
    hf_groups,
    torchvision_feature_groups,
    smp_groups,
    ultralytics_groups,
    diffusers_groups,
]


def detect_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The freeze groups of ``model``: ordered group name -> module and parameter names.

    Args:
        model: any ``nn.Module``; models of the sources of :data:`DETECTORS` (and models holding them) get groups.

    Returns:
        Groups the model has, in order; an empty dict when no known model is found.

    Example:
        >>> import torch, torchvision
        >>> with torch.device("meta"):
        ...     groups = detect_groups(torchvision.models.resnet18())
        >>> groups["stem"], groups["stage1"], groups["head"]
        (('conv1', 'bn1', 'relu', 'maxpool'), ('layer1',), ('fc',))
    """
    for detect in DETECTORS:
        groups = detect(model)
        if groups is not None:
            # known, but not its parts (a wrapper such as TimmWrapper): look inside; a timm feature model whose
            # classifier's groups do not map onto it gets none (the model inside, read alone, would give others)
            if set(groups) <= {"backbone"} and not is_timm_features(model):
                return nested_groups(model, DETECTORS) or groups
            return groups
    return nested_groups(model, DETECTORS)
