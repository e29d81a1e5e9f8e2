"""Group detection: named freeze groups that are right or absent, never guessed.

:func:`detect_groups` asks each detector of :data:`DETECTORS` in turn (one per source, one file each);
the first that knows the model gives its groups. A model that none knows is searched at any depth for
models they know (:mod:`freezable.detect.nested`); what lies outside every known model is in no group.

The vocabulary, for every source (see ``_parts.py``): ``stem``, ``stage1 ... stageN`` (forward order;
together with the stem they cover the backbone: a final norm goes with the last stage),
``block1 ... blockM`` (finer, inside the stages), task parts (``neck``, ``rpn``, ``roi_heads``),
``head`` (what fine-tuning replaces), ``aux_head``, and ``backbone``, an umbrella over everything but
the heads. Libraries with parts of their own name them as the library does (smp's ``encoder`` and
``decoder``, ultralytics' ``layerN``, diffusers' ``down_blockN``): see each source's module. A model of
several stacks gets each part's groups named after the part (``vision_model.stem``,
``vision_model.block3``, the umbrella ``vision_model``: see ``_parts.part_groups``). A group whose members
hold no parameter (a classifier replaced by ``nn.Identity()``) is absent (:func:`removed_groups` names it).
Detection reads names, types and settings only, so it works on the meta device.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._parts import Groups, holds_params
from .diffusers import diffusers_groups
from .nested import nested_groups
from .open_clip import open_clip_groups
from .smp import smp_groups
from .timm import is_timm_features, timm_groups
from .torchvision import torchvision_groups
from .torchvision_features import torchvision_feature_groups
from .transformers import hf_groups
from .ultralytics import ultralytics_groups

__all__ = ["detect_groups", "removed_groups", "DETECTORS"]


def _hf_groups(model: nn.Module) -> Groups | None:
    """:func:`hf_groups`, a known model inside a part (DETR's CNN backbone) read by :func:`detect_groups`."""
    return hf_groups(model, inner=detect_groups)


# One detector per source, asked in order: model -> groups, or None when the model is not of its source.
DETECTORS: list[Callable[[nn.Module], "dict[str, tuple[str, ...]] | None"]] = [
    torchvision_groups,
    timm_groups,
    open_clip_groups,
    _hf_groups,
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
    return {name: members for name, members in _named(model).items() if holds_params(model, members)}


def removed_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The groups detection names in ``model`` but leaves out because their members hold no parameter.

    A torchvision or timm classifier whose classifier was replaced by ``nn.Identity()`` (to put a new head
    outside it) has no ``head``; this says where it was, for the error of ``trainable=["head"]``.

    Example:
        >>> import torch, torchvision
        >>> with torch.device("meta"):
        ...     net = torchvision.models.resnet18()
        >>> net.fc = torch.nn.Identity()
        >>> "head" in detect_groups(net), removed_groups(net)
        (False, {'head': ('fc',)})
    """
    return {name: members for name, members in _named(model).items() if not holds_params(model, members)}


def _named(model: nn.Module) -> Groups:
    """What the first detector that knows the model names, empty groups included."""
    for detect in DETECTORS:
        groups = detect(model)
        if groups is not None:
            # known, but not its parts (a wrapper such as TimmWrapper): look inside; a timm feature model whose
            # classifier's groups do not map onto it gets none (the model inside, read alone, would give others)
            if set(groups) <= {"backbone"} and not is_timm_features(model):
                return nested_groups(model, DETECTORS) or groups
            return groups
    return nested_groups(model, DETECTORS)
