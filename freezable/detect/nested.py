"""The search inside a model no rule knows: the known models it holds, at any depth.

A user's model around a torchvision or timm backbone (an ``encoder`` that is a ResNet, a decoder of its
own) gets the backbone's groups, the member names prefixed by where the backbone sits. With one known
model inside, the groups keep their names (``stem``, ``stage1``...); with several, each group name is
prefixed by where its model sits (``encoder.stem``). What lies outside every known model is in no group:
the user names it (``register_freeze_group``, or a spec in ``trainable=``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ._parts import Groups, with_prefix

__all__ = ["nested_groups"]

Detector = Callable[[nn.Module], "Groups | None"]


def nested_groups(model: nn.Module, detectors: Sequence[Detector]) -> Groups:
    """The groups of the known models inside ``model`` (not ``model`` itself), found by ``detectors``.

    Example:
        >>> import torch, torchvision
        >>> from freezable.detect import DETECTORS
        >>> with torch.device("meta"):
        ...     net = nn.Sequential(torchvision.models.resnet18(), nn.Linear(1000, 2))
        >>> nested_groups(net, DETECTORS)["stem"]
        ('0.conv1', '0.bn1', '0.relu', '0.maxpool')
    """
    found: list[tuple[str, Groups]] = []
    _search(model, "", detectors, found)
    if len(found) == 1:
        path, groups = found[0]
        return with_prefix(groups, path + ".")
    merged: Groups = {}
    for path, groups in found:
        merged.update((f"{path}.{name}", members) for name, members in with_prefix(groups, path + ".").items())
    return merged


def _search(module: nn.Module, prefix: str, detectors: Sequence[Detector], found: list[tuple[str, Groups]]) -> None:
    for name, child in module.named_children():
        path = prefix + name
        groups = _first(child, detectors)
        if groups:
            found.append((path, groups))
        elif groups is None:
            _search(child, path + ".", detectors, found)


def _first(module: nn.Module, detectors: Sequence[Detector]) -> Groups | None:
    for detect in detectors:
        groups = detect(module)
        if groups is not None:
            return groups
    return None
