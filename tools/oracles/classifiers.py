"""Classifiers: the head against what fine-tuning replaces, the stem and stages against the backbone, a
``features_only`` backbone against its classifier, and torchvision's ``trainable_backbone_layers`` rule.

The head's oracles are the library's own: timm's ``get_classifier()`` and what timm's ``reset_classifier``
replaces (the two differ for VOLO, whose ``reset_classifier`` replaces ``aux_head`` too: a head equal to either is
right), torchvision's predictors of a detector, else the classifier attribute (with Inception's and GoogLeNet's
auxiliary heads). Whether a missing stem is a documented absence is read off timm's ``group_matcher``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from freezable.detect._parts import compact
from freezable.wrapper import FrozenBackbone

from .groups import Groups, attr_ids, ids, parameter_names, shared_parameters, staged

__all__ = ["classifier_parameters", "classifier_notions", "head_problems", "split_problems", "stem_absence",
           "stage_problems", "common_names", "features_only_problems", "TRAINABLE_LAYERS_BODIES",
           "trainable_layers_body", "torchvision_frozen", "trainable_layers_problems"]


def _timm_classifier(model: nn.Module) -> set[int]:
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    return {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}


def classifier_parameters(model: nn.Module) -> set[int]:
    """What fine-tuning replaces, by identity: timm's ``get_classifier()``; a torchvision detector's predictors;
    else the ``classifier``/``fc``/``head``/``heads`` attribute (with Inception's and GoogLeNet's aux heads)."""
    if hasattr(model, "get_classifier"):
        return _timm_classifier(model)
    roi = getattr(model, "roi_heads", None)
    if roi is not None:
        names = [f"roi_heads.{n}" for n in ("box_predictor", "mask_predictor", "keypoint_predictor")
                 if getattr(roi, n, None) is not None]
    else:
        children = dict(model.named_children())
        names = [n for n in ("fc", "classifier", "head", "heads") if n in children
                 and any(True for _ in children[n].parameters())][-1:]
        names += [n for n in ("AuxLogits", "aux1", "aux2") if children.get(n) is not None]
    return attr_ids(model, *names)


def _reset_replaces(model: nn.Module) -> set[int] | None:
    """The parameters timm's ``reset_classifier`` replaces (on a copy, on the meta device), by identity in
    ``model``; None where it fails."""
    names = {id(p): n for n, p in model.named_parameters()}
    twin = copy.deepcopy(model)
    before = dict(twin.named_parameters())
    try:
        with torch.device("meta"):
            twin.reset_classifier(7)
    except Exception:  # noqa: BLE001 - a model whose reset_classifier needs what it lacks: no such notion
        return None
    after = dict(twin.named_parameters())
    replaced = {n for n, p in before.items() if after.get(n) is not p}
    return {pid for pid, n in names.items() if n in replaced}


def classifier_notions(model: nn.Module) -> dict[str, set[int]]:
    """The library's own notions of the classifier (label -> parameters, by identity): for timm
    ``get_classifier()`` and ``reset_classifier()`` (what it replaces); else one notion (see
    :func:`classifier_parameters`). A model with no classifier has only empty notions."""
    if not hasattr(model, "get_classifier"):
        return {"the classifier attribute": classifier_parameters(model)}
    notions = {"get_classifier()": _timm_classifier(model)}
    replaced = _reset_replaces(model) if hasattr(model, "reset_classifier") else None
    if replaced is not None:
        notions["reset_classifier()"] = replaced
    return notions


def _names(model: nn.Module, params: set[int]) -> str:
    """``params`` named by the top-most modules that hold them (``head, aux_head``)."""
    found = [n for n, p in model.named_parameters() if id(p) in params]
    return ", ".join(compact(model, found)) or "nothing"


def head_problems(model: nn.Module, groups: Groups) -> list[str]:
    """``head`` holds exactly one of the library's notions of the classifier (:func:`classifier_notions`); a model
    with no classifier has no head. Each problem names the modules on either side."""
    notions = classifier_notions(model)
    head = ids(model, groups, "head")
    if head in notions.values():
        return []
    said = "; ".join(f"{label} names {_names(model, found)}" for label, found in notions.items())
    if not any(notions.values()):
        return [f"a head ({_names(model, head)}) where the model has no classifier"]
    if not head:
        return [f"no head, though {said}"]
    return [f"head holds {_names(model, head)} ({said})"]


def split_problems(model: nn.Module, groups: Groups, tasks: tuple[str, ...] = ("neck", "rpn", "roi_heads",
                                                                                  "aux_head")) -> list[str]:
    """``backbone`` and ``head`` share nothing, and with the task groups (a detector's neck, rpn and roi_heads,
    a segmenter's aux_head) hold every parameter."""
    head, backbone = ids(model, groups, "head"), ids(model, groups, "backbone")
    rest = set().union(*(ids(model, groups, t) for t in tasks))
    every = {id(p) for p in model.parameters()}
    problems = []
    if head & backbone:
        problems.append(f"backbone and head share {_names(model, head & backbone)}")
    left = every - head - backbone - rest
    if left:
        problems.append(f"{_names(model, left)} in no backbone, head or task group")
    return problems


def stem_absence(model: nn.Module) -> str | None:
    """Why a timm model names no stem, read off timm: no ``group_matcher``, one that fails, or one that names no
    stem; None where it names one, and for models of other libraries."""
    if not hasattr(model, "pretrained_cfg"):
        return None
    if not hasattr(model, "group_matcher"):
        return "timm gives it no group_matcher"
    try:
        matcher = model.group_matcher(coarse=True)
    except Exception as e:  # noqa: BLE001 - timm's own matcher failing is the reason
        return f"its group_matcher fails: {str(e) or type(e).__name__}"
    if isinstance(matcher, dict) and not any(str(k).startswith("stem") for k in matcher):
        return f"its group_matcher names no stem (only {', '.join(map(str, matcher))})"
    return None


def stage_problems(model: nn.Module, groups: Groups) -> list[str]:
    """Stem and stages split the backbone (less its neck) with no overlap; each block sits in one stage,
    blocks stage by stage. A model without stages has nothing to check."""
    stages = staged(groups, "stage")
    if not stages:
        return []
    parts = [ids(model, groups, g) for g in ["stem", *stages]]
    shared = shared_parameters(model)  # CoaT shares modules between its stages
    problems = []
    if sum(len(p - shared) for p in parts) != len(set().union(*parts) - shared):
        problems.append("stem and stages overlap")
    if set().union(*parts) != ids(model, groups, "backbone") - ids(model, groups, "neck"):
        problems.append("stem and stages do not cover the backbone")
    where = []
    for block in staged(groups, "block"):
        mine = ids(model, groups, block)
        holders = [i for i, s in enumerate(parts) if mine and mine <= s]
        if len(holders) != 1:
            problems.append(f"{block} is not inside one stage")
            return problems
        where.append(holders[0])
    if where != sorted(where):
        problems.append("blocks are not stage by stage")
    return problems


# -- features_only backbones: the classifier's stages --------------------------------------------


def common_names(features: nn.Module, classifier: nn.Module) -> dict[str, str]:
    """The feature model's parameter names that the classifier has too -> the classifier's names.

    Names are compared with ``_`` read as ``.`` (timm flattens ``stages.0`` into ``stages_0``), and a feature
    model's ``model.`` or ``body.`` prefix (FeatureGetterNet, FeatureHookNet hold the classifier there) dropped
    when needed. Shared parameters count under each of their names.
    """
    def key(name: str) -> str:
        return name.replace("_", ".")

    theirs = {key(n): n for n, _ in classifier.named_parameters(remove_duplicate=False)}
    common = {}
    for name, _ in features.named_parameters(remove_duplicate=False):
        for candidate in (name, name.removeprefix("model."), name.removeprefix("body.")):
            if key(candidate) in theirs:
                common[name] = theirs[key(candidate)]
                break
    return common


def features_only_problems(features: nn.Module, ours: Groups, classifier: nn.Module, theirs: Groups) -> list[str]:
    """A feature backbone's stem, stages and blocks are the classifier's, restricted to the parameters both models
    have (timm prunes what the features do not use: a class token, the last blocks, a final norm): the same
    parameters in the same order, a group the restriction leaves empty absent. It has no head, and its
    backbone is all of it. A feature model without stages gets the one problem ``no stages``."""
    if not staged(ours, "stage"):
        return ["no stages"]
    problems = stage_problems(features, ours)
    if "head" in ours:
        problems.append("a feature backbone has a head")
    common = common_names(features, classifier)
    back = {c: f for f, c in common.items()}
    names = ["stem", *staged(theirs, "stage"), *staged(theirs, "block")]
    for extra in [g for g in [*staged(ours, "stage"), *staged(ours, "block")] if g not in names]:
        problems.append(f"{extra} is not a classifier group")
    for name in names:
        expected = [back[n] for n in parameter_names(classifier, theirs, name) if n in back]
        got = parameter_names(features, ours, name)
        if got != expected:
            problems.append(f"{name} has {len(got)} parameters, the classifier's (in both models) {len(expected)}"
                            if len(got) != len(expected) else f"{name} differs from the classifier's")
    if ids(features, ours, "backbone") != {id(p) for p in features.parameters()}:
        problems.append("backbone is not the whole feature model")
    return problems


# -- torchvision's trainable_backbone_layers rule ----------------------------------------------------

# the FPN detectors, whose builders apply the rule to a backbone.body: body in the name -> (classifier, top N).
# SSD and SSDlite take trainable_backbone_layers too, with extractors of their own and no body: the presets
# do not fit them.
TRAINABLE_LAYERS_BODIES = {"resnet50": ("resnet50", 5), "mobilenet_v3_large": ("mobilenet_v3_large", 6)}


def trainable_layers_body(detector: str) -> str | None:
    """The body (a key of ``TRAINABLE_LAYERS_BODIES``) of a torchvision FPN detector, else None."""
    if "_fpn" not in detector:
        return None
    return next((body for body in TRAINABLE_LAYERS_BODIES if body in detector), None)


def torchvision_frozen(body: str, n: int) -> set[str]:
    """What torchvision's ``trainable_backbone_layers=n`` freezes in a detector with a ``body`` body (its own
    ``_resnet_fpn_extractor`` / ``_mobilenet_extractor`` applied to that classifier, on the meta device)."""
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor

    with torch.device("meta"):
        classifier = torchvision.models.get_model(TRAINABLE_LAYERS_BODIES[body][0])
        if body == "resnet50":
            extracted = _resnet_fpn_extractor(classifier, n)
        else:
            extracted = _mobilenet_extractor(classifier, True, n)
    return {f"backbone.{k}" for k, p in extracted.named_parameters() if not p.requires_grad}


def trainable_layers_problems(name: str, build: Callable[[], nn.Module]) -> list[str]:
    """``torchvision.detection.trainable_backbone_layers_N`` freezes what torchvision's rule freezes, every N.

    Args:
        name: the torchvision detector's name (its body is read off the name: ``resnet50``, ``mobilenet_v3_large``);
            other names have nothing to check.
        build: builds the detector afresh (weights and backbone weights ``None``).
    """
    body = trainable_layers_body(name)
    if body is None:
        return []
    problems = []
    for n in range(TRAINABLE_LAYERS_BODIES[body][1] + 1):
        model = build()
        FrozenBackbone(model, preset=f"torchvision.detection.trainable_backbone_layers_{n}")
        frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
        if frozen != torchvision_frozen(body, n):
            problems.append(f"trainable_backbone_layers_{n} freezes {len(frozen)} parameters, torchvision "
                            f"{len(torchvision_frozen(body, n))}")
    return problems
