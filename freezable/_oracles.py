"""Oracles that detected groups are checked against, shared by ``python -m freezable sweep`` and the tests.

Each oracle reads the answer off the model or off the source library itself, never off detection: the
classifier attribute or timm's ``get_classifier()``, the order in which modules run on a real input,
the same architecture built as a classifier, torchvision's own ``trainable_backbone_layers`` rule; for models
of several parts, each part's groups in the order a real forward runs them, no stage or block across two parts,
and a library's own freeze or lock function (DETR's ``freeze_backbone()``, open_clip's ``lock_image_tower``).
Each check returns the problems it found (an empty list: right).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .groups import part_of, resolve_group
from .inplace import freezable
from .inplace import freeze as freeze_in_place
from .presets import list_presets
from .wrapper import FrozenBackbone

__all__ = [
    "ids",
    "attr_ids",
    "staged",
    "classifier_parameters",
    "stage_problems",
    "forward_order",
    "FORWARD_SAMPLE",
    "forward_order_problems",
    "stage_sizes",
    "common_names",
    "features_only_problems",
    "TRAINABLE_LAYERS_BODIES",
    "trainable_layers_body",
    "torchvision_frozen",
    "trainable_layers_problems",
    "parts",
    "part_forward_problems",
    "straddle_problems",
    "frozen_after",
    "same_frozen_problems",
]

Groups = dict[str, tuple[str, ...]]


def ids(model: nn.Module, groups: Groups, name: str) -> set[int]:
    """The group's parameters, by identity (a shared module's parameters have two names); none if absent."""
    if name not in groups:
        return set()
    return {id(p) for _, p in resolve_group(model, name, list(groups[name])).named_parameters(model)}


def attr_ids(model: nn.Module, *names: str) -> set[int]:
    """The parameters of the named submodules, by identity."""
    return {id(p) for name in names for p in model.get_submodule(name).parameters()}


def staged(groups: Groups, prefix: str) -> list[str]:
    """``prefix1 .. prefixN`` among the groups (``stage``, ``block``), in group order."""
    return [g for g in groups if g.startswith(prefix) and g[len(prefix):].isdigit()]


def classifier_parameters(model: nn.Module) -> set[int]:
    """What fine-tuning replaces, by identity: timm's ``get_classifier()``; a torchvision detector's predictors;
    else the ``classifier``/``fc``/``head``/``heads`` attribute (with Inception's and GoogLeNet's aux heads)."""
    if hasattr(model, "get_classifier"):
        heads = model.get_classifier()
        heads = heads if isinstance(heads, tuple) else (heads,)
        return {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
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


def stage_problems(model: nn.Module, groups: Groups) -> list[str]:
    """Stem and stages split the backbone (less its neck) with no overlap; each block sits in one stage,
    blocks stage by stage. A model without stages has nothing to check."""
    stages = staged(groups, "stage")
    if not stages:
        return []
    parts = [ids(model, groups, g) for g in ["stem", *stages]]
    names = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    shared = {pid for pid in names if names.count(pid) > 1}  # CoaT shares modules between its stages
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


# -- forward order, on a real input --------------------------------------------------------------


def forward_order(model: nn.Module, groups: Groups, names: list[str], x: torch.Tensor) -> list[str]:
    """The named groups in the order their first module runs on ``x`` (forward pre-hooks, no grad)."""
    first: dict[str, int] = {}
    modules = dict(model.named_modules())
    handles = []
    for group in names:
        for member in groups[group]:
            if member in modules and any(True for _ in modules[member].parameters()):
                def hook(module: nn.Module, args: object, group: str = group) -> None:
                    first.setdefault(group, len(first))
                handles.append(modules[member].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(first, key=first.__getitem__)


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, num_classes=3, **kwargs)
    return make


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=3)
    return make


# "source/name" -> (input size, builder of a small real model): the sample whose forward order is checked
FORWARD_SAMPLE: dict[str, tuple[int, Callable[[], nn.Module]]] = {
    "torchvision/resnet18": (64, _torchvision("resnet18")),
    "torchvision/mobilenet_v3_small": (64, _torchvision("mobilenet_v3_small")),
    "torchvision/squeezenet1_1": (64, _torchvision("squeezenet1_1")),
    "torchvision/efficientnet_b0": (64, _torchvision("efficientnet_b0")),
    "torchvision/shufflenet_v2_x0_5": (64, _torchvision("shufflenet_v2_x0_5")),
    "timm/resnet18": (64, _timm("resnet18")),
    "timm/vit_tiny_patch16_224": (32, _timm("vit_tiny_patch16_224", img_size=32, depth=4)),
    "timm/convnext_atto": (64, _timm("convnext_atto")),
    "timm/efficientnet_b0": (64, _timm("efficientnet_b0")),
    "timm/swin_tiny_patch4_window7_224": (64, _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=2,
                                                    depths=(1, 1, 2, 1))),
}


def forward_order_problems(model: nn.Module, groups: Groups, size: int) -> list[str]:
    """``stem, stage1..N, head`` and ``block1..M`` run in that order on a real ``size`` x ``size`` image."""
    problems = []
    x = torch.randn(1, 3, size, size)
    for names in (["stem", *staged(groups, "stage"), "head"], staged(groups, "block")):
        names = [n for n in names if n in groups]
        order = forward_order(model.eval(), groups, names, x)
        if order != names:
            problems.append(f"groups run in the order {order}, not {names}")
    return problems


# -- features_only backbones: the classifier's stages --------------------------------------------


def stage_sizes(model: nn.Module, groups: Groups) -> list[int]:
    """Parameter counts of ``stem, stage1 .. stageN``."""
    return [sum(p.numel() for _, p in resolve_group(model, g, list(groups[g])).named_parameters(model))
            for g in ["stem", *staged(groups, "stage")] if g in groups]


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


def _group_names(model: nn.Module, groups: Groups, name: str) -> list[str]:
    return [n for n, _ in resolve_group(model, name, list(groups[name])).named_parameters(model)]


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
        expected = [back[n] for n in _group_names(classifier, theirs, name) if n in back] if name in theirs else []
        got = _group_names(features, ours, name) if name in ours else []
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


# -- models of several parts -------------------------------------------------------------------------


def parts(groups: Groups) -> list[str]:
    """The parts named in ``groups`` (``vision_model`` of ``vision_model.block3``), in group order."""
    return list(dict.fromkeys(part_of(g)[0] for g in groups if part_of(g)[0]))


def _run_order(model: nn.Module, groups: Groups, names: list[str], run: Callable[[nn.Module], Any]) -> list[str]:
    """The named groups in the order their first module with parameters runs when ``run(model)`` calls a forward
    (pre-hooks, no grad): where a group's weights are used. Parameters alone (a ViT's ``class_embedding``) have no
    hook; a group of them only is not seen."""
    first: dict[str, int] = {}
    modules = dict(model.named_modules())
    handles = []
    for group in names:
        for member in groups[group]:
            if member in modules and any(True for _ in modules[member].parameters()):
                def hook(module: nn.Module, args: object, group: str = group) -> None:
                    first.setdefault(group, len(first))
                handles.append(modules[member].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            run(model.eval())
    finally:
        for handle in handles:
            handle.remove()
    return sorted(first, key=first.__getitem__)


def part_forward_problems(model: nn.Module, groups: Groups, run: Callable[[nn.Module], Any]) -> list[str]:
    """Each part's ``stem, stage1 .. stageN`` and its ``block1 .. blockM`` run in that order when ``run(model)``
    calls a real forward (a single-stack model: the plain names). A group whose members are parameters alone is
    left out of the order (no hook sees it); every other group must run."""
    modules = dict(model.named_modules())
    problems = []
    for part in parts(groups) or [""]:
        named = [g for g in groups if part_of(g)[0] == part and part_of(g)[1]]
        for kinds in (("stem", "stage"), ("block",)):
            names = [g for g in named if part_of(g)[1] in kinds and any(
                m in modules and any(True for _ in modules[m].parameters()) for m in groups[g])]
            order = _run_order(model, groups, names, run)
            if order != names:
                problems.append(f"{part or 'the model'}: groups run in the order {order}, not {names}")
    return problems


def straddle_problems(model: nn.Module, groups: Groups) -> list[str]:
    """No stem, stage or block holds parameters of two parts or of none of its own part, and no group outside
    the parts (a projection, ``logit_scale``) holds a parameter of a part's stem, stages or blocks. Parameters a
    model ties between modules (shared embeddings) are left out."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    shared = {pid for pid, n in counts.items() if n > 1}
    names = parts(groups)
    own = {part: ids(model, groups, part) - shared for part in names}
    staged = set()
    problems = []
    for group in groups:
        part, kind, _ = part_of(group)
        if not kind:
            continue
        mine = ids(model, groups, group) - shared
        staged |= mine
        touched = [p for p in names if mine & own[p]]
        if part and (part not in own or not mine <= own[part]):
            problems.append(f"{group} holds parameters outside the part {part!r}")
        elif not part and len(touched) > 1:
            problems.append(f"{group} holds parameters of the parts {touched}")
    for group in groups:
        inside_a_part = any(group == p or group.startswith(p + ".") or p.startswith(group + ".") for p in names)
        if part_of(group)[1] or inside_a_part:  # a part's own groups (visual.head), the part, an umbrella over parts
            continue
        inside = ids(model, groups, group) - shared
        if inside & staged and not any(inside >= own[p] for p in names):  # an umbrella over parts is no piece
            problems.append(f"{group}, outside the parts, holds parameters of a part's stem, stages or blocks")
    return problems


def frozen_after(build: Callable[[], nn.Module], act: Callable[[nn.Module], Any]) -> set[str]:
    """The names of the parameters that are frozen after ``act`` on a freshly built model (built frozen included)."""
    model = build()
    act(model)
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def same_frozen_problems(build: Callable[[], nn.Module], theirs: Callable[[nn.Module], Any], ours: str,
                         label: str) -> list[str]:
    """The library's own ``theirs(model)`` (``model.model.freeze_backbone()``, ``model.lock_image_tower(2)``) and
    freezable's ``ours`` freeze exactly the same parameters on two fresh models.

    ``ours`` is a preset name (``open_clip.lock_image_tower_2``: ``fz.freeze(model, preset=ours)``) or a group name
    (``backbone``: ``fz.freezable(model).freeze(ours)``).
    """
    def apply(model: nn.Module) -> None:
        if ours in list_presets():
            freeze_in_place(model, preset=ours)
        else:
            freezable(model).freeze(ours)

    expected = frozen_after(build, theirs)
    try:
        got = frozen_after(build, apply)
    except Exception as e:  # noqa: BLE001 - a preset or group that does not fit is the finding
        return [f"{label}: {type(e).__name__}: {e}"]
    if got != expected:
        return [f"{label}: freezes {len(got)} parameters, the library's own {len(expected)} "
                f"(only ours: {sorted(got - expected)[:3]}, only theirs: {sorted(expected - got)[:3]})"]
    return []
