"""torchvision's feature extractors: the body's stages as in the model the extractor came from.

* ``IntermediateLayerGetter`` (the body of torchvision's segmentation and detection backbones) keeps the
  first children of a classifier under their own names: ``stem``, ``stage1 ...``, ``block1 ...`` as that
  classifier's (ResNet- and MobileNet-shaped bodies), and ``backbone``, all of it.
* ``create_feature_extractor`` gives an ``fx.GraphModule`` that keeps the modules the graph calls under
  their qualified names, and the class name of the model it traced: a torchvision model's groups, read by
  that model's rule, restricted to what the graph kept (a ViT's blocks but no stages: its rule counts
  layers, and a graph may keep fewer than the model had).
* ``BackboneWithFPN``: its ``body``'s stem, stages and blocks, ``neck`` (``fpn``) and ``backbone``, all of it,
  as inside a detector.
* SSD's and SSDlite's feature extractors alone: their body's stem, stages and blocks, ``neck`` (``extra``).

torchvision's feature-extraction module is read from ``sys.modules``: a graph module of it can only exist
when it was imported.
"""

from __future__ import annotations


from torch import nn

from ._parts import Groups, Parts, assemble, has_params, instance_of
from .torchvision import body_parts, rule_for, ssd_body_parts

__all__ = ["torchvision_feature_groups"]


def torchvision_feature_groups(model: nn.Module) -> Groups | None:
    """The groups of a torchvision feature extractor, or ``None`` when ``model`` is none this module knows.

    Example:
        >>> import torch, torchvision
        >>> from torchvision.models.feature_extraction import create_feature_extractor
        >>> extractor = create_feature_extractor(torchvision.models.resnet18(), {"layer2": "c3"})
        >>> groups = torchvision_feature_groups(extractor)
        >>> groups["stem"], groups["stage2"], "stage3" in groups
        (('conv1', 'bn1', 'relu', 'maxpool'), ('layer2',), False)
    """
    kind = _kind(model)
    if kind == "IntermediateLayerGetter":
        parts = body_parts(model)
        return None if parts is None else assemble(model, parts)
    if kind == "BackboneWithFPN":
        parts = body_parts(model.get_submodule("body"), "body.")
        if parts is None:
            return None
        parts.tasks = {"neck": ["fpn"]}
        return assemble(model, parts)
    if kind in ("SSDLiteFeatureExtractorMobileNet", "SSDFeatureExtractorVGG"):
        parts = ssd_body_parts(model)
        if parts is None:
            return None
        parts.tasks = {"neck": [n for n, _ in model.named_parameters(recurse=False)] + ["extra"]}
        return assemble(model, parts)
    if kind == "graph":
        return _graph_groups(model)
    return None


def _kind(model: nn.Module) -> str | None:
    if instance_of(model, "torchvision.models.feature_extraction", "DualGraphModule"):
        return "graph"
    name = type(model).__name__
    if type(model).__module__.startswith("torchvision.models.") and name in (
            "IntermediateLayerGetter", "BackboneWithFPN", "SSDLiteFeatureExtractorMobileNet", "SSDFeatureExtractorVGG"):
        return name
    return None


# the rules that cut stages by counting layers: a graph may keep fewer layers than the traced model had
_COUNTED = ("VisionTransformer",)


def _graph_groups(graph: nn.Module) -> Groups | None:
    """A torchvision model traced by ``create_feature_extractor``: its rule, on the modules the graph kept.

    The graph's class is named after the traced model's and keeps its modules under their qualified names
    (the containers it traced through become plain modules holding what it calls). A rule that finds
    what it reads missing (another library's model of the same class name) gives no groups. Where the
    rule cuts stages by counting layers (ViT), the graph may hold fewer than the model did: no stages then.
    A deep copy of the graph is named ``GraphModule`` (torchvision's ``__deepcopy__`` drops the traced model's
    class name): no groups.
    """
    rule = rule_for(type(graph).__name__)
    if rule is None:
        return None
    try:
        parts = rule(graph)
    except (AttributeError, IndexError, KeyError, TypeError):  # not the torchvision model of that name
        return None
    parts = _kept(graph, parts)
    if parts.blocks is None:
        parts.blocks = _graph_blocks(graph, parts.stages)
    if type(graph).__name__ in _COUNTED:
        parts.stages = []
    return assemble(graph, parts) or None


def _kept(graph: nn.Module, parts: Parts) -> Parts:
    """``parts`` less the names the graph did not keep."""
    names = {n for n, _ in graph.named_modules()} | {n for n, _ in graph.named_parameters()}

    def keep(members: list[str]) -> list[str]:
        return [m for m in members if m in names]

    return Parts(stem=keep(parts.stem), stages=[keep(s) for s in parts.stages],
                 blocks=None if parts.blocks is None else [keep(b) for b in parts.blocks],
                 tasks={k: keep(v) for k, v in parts.tasks.items()}, head=keep(parts.head),
                 aux_head=keep(parts.aux_head), backbone=None if parts.backbone is None else keep(parts.backbone))


def _graph_blocks(graph: nn.Module, stages: list[list[str]]) -> list[list[str]]:
    """The blocks the traced model had: each stage member, or the numbered children of a traced container
    (a Sequential of blocks in the model, a plain module in the graph)."""
    blocks = []
    for name in (n for stage in stages for n in stage):
        module = graph.get_submodule(name)
        children = list(module.named_children())
        listed = isinstance(module, (nn.Sequential, nn.ModuleList)) or type(module) is nn.Module
        if listed and children and all(n.isdigit() for n, _ in children):
            blocks += [[f"{name}.{n}"] for n, child in children if has_params(child)]
        elif has_params(module):
            blocks.append([name])
    return blocks
