"""Oracles that detected groups are checked against, shared by ``python -m freezable sweep``,
``tools/sweep_libraries.py`` and the tests.

Each oracle reads the answer off the model or off the source library itself, never off detection: the
classifier attribute or timm's ``get_classifier()``, the order in which modules run on a real input,
the same architecture built as a classifier, torchvision's own ``trainable_backbone_layers`` rule.
Each check returns the problems it found (an empty list: right).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .detect import detect_groups
from .detect._parts import compact
from .groups import resolve_group
from .norms import has_running_stats
from .wrapper import FrozenBackbone

__all__ = [
    "ids",
    "attr_ids",
    "staged",
    "classifier_parameters",
    "stage_problems",
    "forward_order",
    "run_order",
    "FORWARD_SAMPLE",
    "forward_order_problems",
    "stage_sizes",
    "common_names",
    "features_only_problems",
    "TRAINABLE_LAYERS_BODIES",
    "trainable_layers_body",
    "torchvision_frozen",
    "trainable_layers_problems",
    "group_parameter_names",
    "part_order_problems",
    "straddle_problems",
    "attribute_problems",
    "cover_problems",
    "frozen_parameters",
    "held_norms",
    "library_freeze_problems",
    "smp_feature_parameters",
    "smp_stage_problems",
    "smp_problems",
    "smp_freeze_problems",
    "yolo_trainer_freeze",
    "yolo_sections",
    "ultralytics_problems",
    "ultralytics_freeze_problems",
    "diffusers_problems",
    "origin_problems",
    "LIBRARIES",
    "LibrarySample",
    "LIBRARY_SAMPLES",
    "library_of",
    "library_check",
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
    return run_order(model, groups, names, lambda: model(x))


def run_order(model: nn.Module, groups: Groups, names: list[str], run: Callable[[], object]) -> list[str]:
    """The named groups in the order their first module runs during ``run()`` (forward pre-hooks, no grad);
    a group none of whose modules runs is left out."""
    first: dict[str, int] = {}
    modules = dict(model.named_modules())
    handles = []
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    for group in names:
        for member in groups[group]:
            # and every module inside: a traced graph calls its leaves, never the containers that hold them;
            # not those shared with other places (ultralytics' one SiLU in every Conv runs first in layer 0)
            if member not in modules:
                continue
            inside = [m for m in list(modules[member].modules())[1:] if seen[id(m)] == 1]
            for module in [modules[member], *inside]:
                def hook(module: nn.Module, args: object, group: str = group) -> None:
                    first.setdefault(group, len(first))
                handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            run()
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


# -- models of several parts, read against their libraries' own notion of them (issue 20) ------------------
# smp, ultralytics, diffusers and torchvision's feature extractors: shared by tools/sweep_libraries.py and
# tests/test_libraries.py. Each check reads the answer off the library (its attributes, its own freeze
# function, its yaml, the order a real forward runs), never off detection.


def group_parameter_names(model: nn.Module, groups: Groups, name: str) -> set[str]:
    """The parameter names of a group; none if it is absent."""
    return set(_group_names(model, groups, name)) if name in groups else set()


def part_order_problems(model: nn.Module, groups: Groups, parts: dict[str, list[str]],
                        run: Callable[[], object]) -> list[str]:
    """Each part's groups (part -> group names, in group order) run in that order during ``run()``, every one
    of them (forward pre-hooks on a real input)."""
    problems = []
    for part, names in parts.items():
        names = [n for n in names if n in groups]
        order = run_order(model, groups, names, run)
        if order != names:
            problems.append(f"{part}: groups run in the order {order}, not {names}")
    return problems


def straddle_problems(model: nn.Module, groups: Groups, names: list[str], parts: dict[str, set[int]]) -> list[str]:
    """Each named group (a stage, a block, a layer) lies inside one part (part name -> its parameters, by
    identity): none straddles two, none lies outside them all."""
    problems = []
    for name in (n for n in names if n in groups):
        mine = ids(model, groups, name)
        holders = [part for part, own in parts.items() if mine and mine <= own]
        if len(holders) != 1:
            touched = [part for part, own in parts.items() if mine & own]
            problems.append(f"{name} lies in {touched or 'no part'}, not in one part")
    return problems


def attribute_problems(model: nn.Module, groups: Groups, expected: dict[str, list[str]]) -> list[str]:
    """Each group holds exactly the parameters of the submodules the library names for it (group -> attribute
    paths); a group whose attributes hold no parameter must be absent."""
    problems = []
    for group, names in expected.items():
        want = attr_ids(model, *names)
        got = ids(model, groups, group)
        if got != want:
            problems.append(f"{group} holds {len(got)} parameters, {' + '.join(names) or 'nothing'} {len(want)}"
                            if len(got) != len(want) else f"{group} is not {' + '.join(names)}")
    return problems


def cover_problems(model: nn.Module, groups: Groups, names: list[str]) -> list[str]:
    """The named groups split the model's parameters: no overlap, nothing left out."""
    parts = [ids(model, groups, n) for n in names if n in groups]
    every = {id(p) for p in model.parameters()}
    problems = []
    if sum(map(len, parts)) != len(set().union(*parts)):
        problems.append(f"{names} overlap")
    if set().union(*parts) != every:
        problems.append(f"{names} leave {len(every - set().union(*parts))} parameters out")
    return problems


def frozen_parameters(model: nn.Module) -> set[str]:
    """The parameter names with ``requires_grad=False``."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def held_norms(model: nn.Module, run: Callable[[], object]) -> set[str]:
    """The norm layers with running statistics whose statistics ``run()`` (a forward in training) leaves
    bit-identical: those held in eval, and those the forward does not reach."""
    norms = {n: m for n, m in model.named_modules() if has_running_stats(m)}
    before = {n: [b.clone() for b in m.buffers(recurse=False)] for n, m in norms.items()}
    with torch.no_grad():
        run()
    return {n for n, m in norms.items() if all(torch.equal(a, b) for a, b in zip(before[n], m.buffers(recurse=False)))}


def library_freeze_problems(build: Callable[[], nn.Module], library: Callable[[nn.Module], object],
                            ours: Callable[[nn.Module], nn.Module], what: str,
                            call: Callable[[nn.Module], object]) -> list[str]:
    """The library's own freeze function and freezable freeze the same parameters and hold the same norm layers
    in eval, in training: ``library(model)`` freezes a fresh model and leaves it as that library trains it;
    ``ours(model)`` freezes another and returns what to train (the model or its wrapper), which ``train()``
    then puts in training mode; ``call`` runs a forward on each."""
    theirs_model, ours_model = build(), build()
    library(theirs_model)
    handle = ours(ours_model).train()
    problems = []
    theirs, mine = frozen_parameters(theirs_model), frozen_parameters(ours_model)
    if theirs != mine:
        problems.append(f"{what}: freezes {len(mine)} parameters, the library {len(theirs)} "
                        f"(only ours: {sorted(mine - theirs)[:3]}, only the library's: {sorted(theirs - mine)[:3]})")
    held_theirs = held_norms(theirs_model, lambda: call(theirs_model))
    held_mine = held_norms(ours_model, lambda: call(handle))
    if held_theirs != held_mine:
        problems.append(f"{what}: a forward in training leaves {len(held_mine)} norm layers' statistics alone, "
                        f"the library's {len(held_theirs)} (only ours: {sorted(held_mine - held_theirs)[:3]}, "
                        f"only the library's: {sorted(held_theirs - held_mine)[:3]})")
    return problems


# -- segmentation_models_pytorch: its encoders' stage split, its parts, freeze_encoder() -------------------


def smp_feature_parameters(encoder: nn.Module, x: torch.Tensor) -> list[set[str]]:
    """For each feature map an smp encoder returns on ``x``, the parameters it depends on (those its autograd
    graph reaches); ``features[k]`` is at stride ``2 ** k``, or the encoder's output stride (checked)."""
    params = dict(encoder.named_parameters())
    with torch.enable_grad():
        features = encoder.eval()(x)
        found = []
        for k, feature in enumerate(features):
            stride = min(2 ** k, encoder.output_stride)  # a dilated encoder (DeepLabV3) stops at its output stride
            if feature.shape[-1] * stride != x.shape[-1]:
                raise AssertionError(f"smp feature {k} is at stride {x.shape[-1] / feature.shape[-1]}, not {stride}")
            if not feature.requires_grad:
                found.append(set())
                continue
            grads = torch.autograd.grad(feature.sum(), list(params.values()), allow_unused=True, retain_graph=True)
            found.append({n for n, g in zip(params, grads) if g is not None})
    return found


def smp_stage_problems(encoder: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """An smp encoder's groups (named relative to it) are smp's own stage split: ``stem`` is what the
    stride-2 feature depends on, ``stage i`` what the stride-``2 ** (i + 1)`` feature adds; parameters no
    feature uses go with the last stage; blocks sit in the stages, in order."""
    used = smp_feature_parameters(encoder, x)
    pieces = [used[k] - (used[k - 1] if k else set()) for k in range(len(used))]
    expected = [pieces[0] | pieces[1]] + [p for p in pieces[2:] if p]
    unused = set(dict(encoder.named_parameters())) - set().union(*used)
    expected[-1] |= unused
    names = ["stem", *staged(groups, "stage")]
    got = [group_parameter_names(encoder, groups, g) for g in names]
    problems = []
    if not expected[0]:  # no stride-2 feature of its own (a Mix Transformer): no stem
        expected, got = expected[1:], got[1:]
        if "stem" in groups:
            problems.append("a stem where smp's stride-2 feature is a placeholder")
    if got != expected:
        problems.append(f"stem and stages hold {[len(g) for g in got]} parameters, smp's feature split "
                        f"{[len(e) for e in expected]}")
    return problems + stage_problems(encoder, {**groups, "backbone": _whole(encoder)})


def _whole(model: nn.Module) -> tuple[str, ...]:
    """Names that together hold every parameter of ``model`` (its top-most modules)."""
    return compact(model, [n for n, _ in model.named_parameters()])


def smp_problems(model: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """An smp segmentation model: its parts are its attributes (``backbone`` is ``encoder``), the encoder's
    stages are smp's own split (a ``tu-`` encoder's: timm's own groups of its timm model, which may cut
    elsewhere than smp's feature maps), no stage or block straddles two parts, and the stages, the blocks and
    the parts run in that order."""
    parts = [p for p in ("encoder", "decoder", "segmentation_head", "classification_head")
             if getattr(model, p, None) is not None]
    problems = attribute_problems(model, groups, {**{p: [p] for p in parts}, "backbone": ["encoder"]})
    inner = {g: tuple(m.removeprefix("encoder.") for m in members) for g, members in groups.items()
             if g == "stem" or g[:5] in ("stage", "block") and g[5:].isdigit()}
    timm_model = getattr(model.encoder, "model", None)
    if type(model.encoder).__name__ == "TimmUniversalEncoder" and timm_model is not None:  # timm's own groups
        import timm

        classifier = timm.create_model(timm_model.pretrained_cfg["architecture"], pretrained=False)
        own = {g: tuple(m.removeprefix("model.") for m in members) for g, members in inner.items()}
        problems += [f"timm's own: {p}" for p in features_only_problems(
            timm_model, {**own, "backbone": _whole(timm_model)}, classifier, detect_groups(classifier))]
    else:
        problems += smp_stage_problems(model.encoder, inner, x)
    stages = ["stem", *staged(groups, "stage")]
    blocks = staged(groups, "block")
    problems += straddle_problems(model, groups, stages + blocks, {p: attr_ids(model, p) for p in parts})
    problems += part_order_problems(model, groups, {"encoder stages": stages, "encoder blocks": blocks,
                                                    "parts": parts}, lambda: model.eval()(x))
    return problems


def smp_freeze_problems(build: Callable[[], nn.Module], x: torch.Tensor) -> list[str]:
    """The preset ``smp.freeze_encoder`` freezes what ``model.freeze_encoder()`` freezes, norms held in eval alike."""
    def library(model: nn.Module) -> None:
        model.freeze_encoder()
        model.train()  # smp's train() leaves a frozen encoder's norm layers in eval

    return library_freeze_problems(build, library, lambda m: FrozenBackbone(m, preset="smp.freeze_encoder"),
                                   "smp.freeze_encoder", lambda m: m(x))


# -- ultralytics: model.model[i], the yaml's sections, the trainer's freeze=N --------------------------------


def yolo_trainer_freeze(model: nn.Module, n: int) -> nn.Module:
    """Freezes ``model`` (a YOLO ``BaseModel``) as the ultralytics trainer does for ``freeze=n`` and puts it in
    training mode as the trainer does: its own ``BaseTrainer._setup_train`` (cut short after freezing, before
    it builds data loaders) and ``_model_train``, on a trainer that holds ``model``. Returns ``model``."""
    from ultralytics.cfg import DEFAULT_CFG, get_cfg
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils import LOGGER

    class Frozen(Exception):
        pass

    class FreezeOnly(BaseTrainer):
        def __init__(self) -> None:  # only what _setup_train reads before it freezes
            self.args = get_cfg(DEFAULT_CFG, {"freeze": n, "amp": False, "compile": False, "device": "cpu"})
            self.device, self.model, self.world_size, self.batch_size = torch.device("cpu"), model, 1, 16

        def setup_model(self) -> None:
            return None

        def set_model_attributes(self) -> None:
            pass

        def _build_train_pipeline(self) -> None:
            raise Frozen

    trainer = FreezeOnly()
    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # it logs a line per frozen parameter
    try:
        trainer._setup_train()
    except Frozen:
        pass
    finally:
        LOGGER.setLevel(level)
    trainer._model_train()
    return model


def yolo_sections(model: nn.Module) -> tuple[list[int], list[int]]:
    """The layer indices of the yaml's ``backbone`` and ``head`` sections, read off the yaml file ultralytics
    loads (``yaml_model_load``), or ``model.yaml`` where the model came from a dict; each row's module is
    checked to be the class of ``model.model[i]``."""
    from ultralytics.nn.tasks import yaml_model_load

    spec = model.yaml
    if spec.get("yaml_file"):
        spec = yaml_model_load(spec["yaml_file"])
    rows = spec["backbone"] + spec["head"]
    layers = list(model.model)
    if len(rows) != len(layers):
        raise AssertionError(f"the yaml lists {len(rows)} layers, the model has {len(layers)}")
    for i, (row, layer) in enumerate(zip(rows, layers)):
        if str(row[2]).rpartition(".")[2] != type(layer).__name__:
            raise AssertionError(f"yaml row {i} is a {row[2]}, model.model[{i}] a {type(layer).__name__}")
    cut = len(spec["backbone"])
    return list(range(cut)), list(range(cut, len(layers)))


def ultralytics_problems(model: nn.Module, groups: Groups, x: torch.Tensor) -> list[str]:
    """A YOLO model: ``layer{i}`` is ``model.model[i]`` (absent without parameters), ``task_head`` the last layer,
    ``backbone`` and ``head`` the yaml's sections, each layer in one section, layers and sections in forward
    order, and ``ultralytics.freeze_N`` what the trainer's ``freeze=N`` freezes (N: 0, 1, the backbone, all but
    the last layer)."""
    backbone, head = yolo_sections(model)
    layers = list(model.model)
    expected = {f"layer{i}": [f"model.{i}"] for i in range(len(layers))}
    expected.update(task_head=[f"model.{len(layers) - 1}"], backbone=[f"model.{i}" for i in backbone],
                    head=[f"model.{i}" for i in head])
    problems = attribute_problems(model, groups, expected)
    layer_groups = [f"layer{i}" for i in range(len(layers)) if f"layer{i}" in groups]
    sections = {"backbone": attr_ids(model, *expected["backbone"]), "head": attr_ids(model, *expected["head"])}
    problems += straddle_problems(model, groups, layer_groups, sections)
    problems += part_order_problems(model, groups, {"layers": layer_groups, "sections": ["backbone", "head"]},
                                    lambda: model.eval()(x))
    return problems


def ultralytics_freeze_problems(build: Callable[[], nn.Module], ns: list[int], x: torch.Tensor) -> list[str]:
    """``ultralytics.freeze_N`` freezes what the trainer's ``freeze=N`` freezes, norms held in eval alike."""
    return [p for n in ns for p in library_freeze_problems(
        build, lambda m, n=n: yolo_trainer_freeze(m, n),
        lambda m, n=n: FrozenBackbone(m, preset=f"ultralytics.freeze_{n}"), f"ultralytics.freeze_{n}",
        lambda m: m(x))]


# -- diffusers: a UNet's blocks and an autoencoder's parts, by attribute ------------------------------------


def diffusers_problems(model: nn.Module, groups: Groups, run: Callable[[], object]) -> list[str]:
    """A UNet: ``down_block{i}``, ``mid_block``, ``up_block{i}`` are its blocks, stem and head its other children
    (input and output sides), all of them splitting the model and running stem, down, mid, up, head.
    An autoencoder: each part is its attribute, the parts split the model and run encoder first."""
    children = dict(model.named_children())
    if "down_blocks" in children:
        down = [f"down_block{i + 1}" for i in range(len(model.down_blocks))]
        up = [f"up_block{i + 1}" for i in range(len(model.up_blocks))]
        expected = {g: [f"down_blocks.{i}"] for i, g in enumerate(down)}
        expected.update({g: [f"up_blocks.{i}"] for i, g in enumerate(up)})
        expected.update(mid_block=["mid_block"] if model.mid_block is not None else [], down_blocks=["down_blocks"],
                        up_blocks=["up_blocks"], head=[n for n in ("conv_norm_out", "conv_out") if children.get(n)])
        order = ["stem", *down, "mid_block", *up, "head"]
    else:
        order = [n for n in ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder")
                 if children.get(n) is not None]
        expected = {n: [n] for n in order}
    return (attribute_problems(model, groups, expected) + cover_problems(model, groups, order)
            + part_order_problems(model, groups, {"model": order}, run))


# -- torchvision's feature extractors: the stages of the model they came from -------------------------------


def origin_problems(extractor: nn.Module, ours: Groups, original: nn.Module, theirs: Groups) -> list[str]:
    """A feature extractor's stem, stages and blocks are those of the model it was made from (whose modules it
    shares): the same parameters, restricted to those the extractor has; a group left empty is absent."""
    mine = {id(p) for p in extractor.parameters()}
    names = ["stem", *staged(theirs, "stage"), *staged(theirs, "block")]
    problems = [f"{extra} is not a group of the model it came from"
                for extra in [*staged(ours, "stage"), *staged(ours, "block")] if extra not in names]
    for name in names:
        expected = ids(original, theirs, name) & mine
        got = ids(extractor, ours, name)
        if got != expected:
            problems.append(f"{name} holds {len(got)} parameters, the model's (in the extractor) {len(expected)}")
    return problems


# -- one tiny model per family of each library, and what its check says ------------------------------------

# the short names the sweep prints -> the module each library is imported as
LIBRARIES = {"smp": "segmentation_models_pytorch", "ultralytics": "ultralytics", "diffusers": "diffusers",
             "torchvision-features": "torchvision"}


@dataclass(frozen=True)
class LibrarySample:
    """A tiny model of one family of a library, random weights, nothing downloaded, and its checks."""

    build: Callable[[], nn.Module]  # builds the model afresh (seeded)
    check: Callable[[nn.Module, Groups], list[str]]  # the library's own notion, against detected groups
    call: Callable[[nn.Module], object]  # a forward on a real input (seeded)
    trainable: tuple[str, ...] = ()  # the groups left to train in the freeze-everything-but-X step
    absent: str = ""  # why the family gets no groups (then its groups must be empty)
    slow: bool = False  # the tests run it under -m slow only (the sweep always)


def _image(size: int, channels: int = 3) -> torch.Tensor:
    """A batch of two (BatchNorm after a global pool needs more than one value per channel in training)."""
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


_LAST_BUILT: dict[Callable[[], nn.Module], nn.Module] = {}  # the last model built, whose copies the next builds are


def _seeded(make: Callable[[], nn.Module], copies: bool = True) -> Callable[[], nn.Module]:
    """``make`` seeded; with ``copies``, a model built again (the checks build several) is a deep copy of the last
    one built."""
    def build() -> nn.Module:
        if not copies:
            torch.manual_seed(0)
            return make()
        if make not in _LAST_BUILT:
            torch.manual_seed(0)
            _LAST_BUILT.clear()  # one model kept at a time
            _LAST_BUILT[make] = make()
        return copy.deepcopy(_LAST_BUILT[make])
    return build


def _smp(arch: str, encoder: str, **kwargs: object) -> LibrarySample:
    def make() -> nn.Module:
        import warnings

        import segmentation_models_pytorch as smp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp's own deprecation notes (timm- encoders)
            return getattr(smp, arch)(encoder, encoder_weights=None, classes=2, **kwargs)

    build = _seeded(make)
    return LibrarySample(build, lambda m, g: smp_problems(m, g, _image(64)) + smp_freeze_problems(build, _image(64)),
                         lambda m: m(_image(64)), trainable=("decoder", "segmentation_head"),
                         slow=encoder not in ("resnet18", "mobilenet_v2", "efficientnet-b0", "mit_b0", "tu-resnet18"))


def _yolo(task: str, yaml: str, slow: bool = False) -> LibrarySample:
    def make() -> nn.Module:
        from ultralytics.nn import tasks

        return getattr(tasks, task)(yaml, verbose=False)

    def check(model: nn.Module, groups: Groups) -> list[str]:
        backbone, _ = yolo_sections(model)
        ns = sorted({0, 1, len(backbone), len(model.model) - 1})
        return ultralytics_problems(model, groups, _image(64)) + ultralytics_freeze_problems(build, ns, _image(64))

    build = _seeded(make)
    return LibrarySample(build, check, lambda m: m(_image(64)), trainable=("task_head",), slow=slow)


def _diffusers(make: Callable[[], nn.Module], call: Callable[[nn.Module], object], trainable: tuple[str, ...],
               absent: str = "") -> LibrarySample:
    return LibrarySample(_seeded(make), lambda m, g: diffusers_problems(m, g, lambda: call(m.eval())), call,
                         trainable=trainable, absent=absent)


def _unet2d() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=4)


def _unet2d_condition() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def _autoencoder_kl() -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))


def _vq_model() -> nn.Module:
    from diffusers import VQModel

    return VQModel(block_out_channels=(8,), norm_num_groups=4, latent_channels=4, num_vq_embeddings=8,
                   layers_per_block=1)


def _transformer2d() -> nn.Module:
    from diffusers import Transformer2DModel

    return Transformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, num_layers=1,
                              norm_num_groups=2, sample_size=8)


def _extractor(pair: Callable[[], tuple[nn.Module, nn.Module]], size: int, trainable: tuple[str, ...],
               call: Callable[[nn.Module], object] | None = None) -> LibrarySample:
    """A torchvision feature extractor, made by ``pair()`` as ``(the model it came from, the extractor)``."""
    call = call or (lambda m: m(_image(size)))

    def check(model: nn.Module, groups: Groups) -> list[str]:
        original, extractor = pair()
        problems = origin_problems(extractor, detect_groups(extractor), original, detect_groups(original))
        order = ["stem", *staged(groups, "stage"), "neck", "head"]
        return problems + stage_problems(model, groups) + part_order_problems(
            model, groups, {"stages": order, "blocks": staged(groups, "block")}, lambda: call(model.eval()))

    # built afresh each time: a deep copy of a traced graph loses the traced model's class name (torchvision 0.29)
    return LibrarySample(_seeded(lambda: pair()[1], copies=False), check, call, trainable=trainable)


def _layer_getter() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    model = torchvision.models.resnet18()
    return model, IntermediateLayerGetter(model, {"layer2": "c3", "layer4": "c5"})


def _graph(name: str, nodes: dict[str, str]) -> Callable[[], tuple[nn.Module, nn.Module]]:
    def pair() -> tuple[nn.Module, nn.Module]:
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        model = torchvision.models.get_model(name)
        return model, create_feature_extractor(model, nodes)
    return pair


def _fpn_resnet() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    model = torchvision.models.resnet18()
    return model, _resnet_fpn_extractor(model, trainable_layers=5)


def _fpn_mobilenet() -> tuple[nn.Module, nn.Module]:
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    model = torchvision.models.mobilenet_v3_small()
    return model, _mobilenet_extractor(model, fpn=True, trainable_layers=6)


def _ssdlite_body() -> tuple[nn.Module, nn.Module]:
    """SSDlite's extractor, made as ``ssdlite320_mobilenet_v3_large`` makes it, from a MobileNet kept here."""
    from functools import partial

    import torchvision
    from torchvision.models.detection.ssdlite import _mobilenet_extractor

    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    model = torchvision.models.mobilenet_v3_large(norm_layer=norm_layer, reduced_tail=True)
    return model, _mobilenet_extractor(model, 6, norm_layer)


def _ssdlite_detector() -> LibrarySample:
    """The detector: its body's groups are those of its extractor alone (checked against its MobileNet above)."""
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=3)

    def check(model: nn.Module, groups: Groups) -> list[str]:
        alone = {g: tuple(f"backbone.{m}" for m in members) for g, members in detect_groups(model.backbone).items()
                 if g != "backbone"}
        problems = [f"{g} differs from the extractor's alone" for g, members in alone.items() if groups.get(g) != members]
        return problems + stage_problems(model, groups) + forward_order_problems(model, groups, 64)

    def call(model: nn.Module) -> object:  # targets: a detector in training returns its losses
        target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
        return model(list(_image(64)), [target, target])

    return LibrarySample(_seeded(make), check, call, trainable=("neck", "head"))


LIBRARY_SAMPLES: dict[str, LibrarySample] = {
    "smp/Unet-resnet18": _smp("Unet", "resnet18", aux_params={"classes": 3}),
    "smp/FPN-mobilenet_v2": _smp("FPN", "mobilenet_v2"),
    "smp/DeepLabV3Plus-efficientnet-b0": _smp("DeepLabV3Plus", "efficientnet-b0"),
    "smp/Unet-mit_b0": _smp("Unet", "mit_b0"),
    "smp/FPN-tu-resnet18": _smp("FPN", "tu-resnet18"),
    "smp/Unet-tu-efficientnet_b0": _smp("Unet", "tu-efficientnet_b0"),
    "smp/Unet-tu-convnext_atto": _smp("Unet", "tu-convnext_atto"),
    "smp/Unet-timm-efficientnet-b0": _smp("Unet", "timm-efficientnet-b0"),
    "smp/Unet-timm-skresnet18": _smp("Unet", "timm-skresnet18"),
    "smp/Unet-densenet121": _smp("Unet", "densenet121"),
    "smp/Unet-se_resnet50": _smp("Unet", "se_resnet50"),
    "smp/Unet-xception": _smp("Unet", "xception"),
    "smp/Unet-dpn68": _smp("Unet", "dpn68"),
    "smp/Unet-vgg11": _smp("Unet", "vgg11"),
    "smp/Unet-mobileone_s0": _smp("Unet", "mobileone_s0"),
    "smp/Linknet-inceptionv4": _smp("Linknet", "inceptionv4"),
    "smp/Linknet-inceptionresnetv2": _smp("Linknet", "inceptionresnetv2"),
    "ultralytics/DetectionModel-yolov8n": _yolo("DetectionModel", "yolov8n.yaml"),
    "ultralytics/DetectionModel-yolo11n": _yolo("DetectionModel", "yolo11n.yaml"),
    "ultralytics/SegmentationModel-yolov8n-seg": _yolo("SegmentationModel", "yolov8n-seg.yaml"),
    "ultralytics/ClassificationModel-yolov8n-cls": _yolo("ClassificationModel", "yolov8n-cls.yaml"),
    "ultralytics/PoseModel-yolo11n-pose": _yolo("PoseModel", "yolo11n-pose.yaml"),
    "ultralytics/OBBModel-yolov8n-obb": _yolo("OBBModel", "yolov8n-obb.yaml", slow=True),
    "ultralytics/DetectionModel-yolo26n": _yolo("DetectionModel", "yolo26n.yaml", slow=True),
    "ultralytics/WorldModel-yolov8s-worldv2": _yolo("WorldModel", "yolov8s-worldv2.yaml", slow=True),
    "ultralytics/RTDETRDetectionModel-rtdetr-l": _yolo("RTDETRDetectionModel", "rtdetr-l.yaml", slow=True),
    "diffusers/UNet2DModel": _diffusers(_unet2d, lambda m: m(_image(16), 3), ("up_blocks", "head")),
    "diffusers/UNet2DConditionModel": _diffusers(
        _unet2d_condition, lambda m: m(_image(16, 4), 3, encoder_hidden_states=torch.ones(2, 5, 8)),
        ("up_blocks", "head")),
    "diffusers/AutoencoderKL": _diffusers(_autoencoder_kl, lambda m: m(_image(16)), ("decoder",)),
    "diffusers/VQModel": _diffusers(_vq_model, lambda m: m(_image(16)), ("decoder",)),
    "diffusers/Transformer2DModel": _diffusers(_transformer2d, lambda m: m(_image(8, 4)), (),
                                               absent="a transformer: no UNet blocks or autoencoder parts"),
    "torchvision-features/IntermediateLayerGetter-resnet18": _extractor(_layer_getter, 64, ("stage4",)),
    "torchvision-features/create_feature_extractor-resnet18": _extractor(
        _graph("resnet18", {"layer2": "c3", "layer4": "c5"}), 64, ("stage4",)),
    "torchvision-features/create_feature_extractor-mobilenet_v3_small": _extractor(
        _graph("mobilenet_v3_small", {"features.6": "c4", "features.12": "c5"}), 64, ("stage4",)),
    "torchvision-features/BackboneWithFPN-resnet18": _extractor(_fpn_resnet, 64, ("stage4", "neck")),
    "torchvision-features/BackboneWithFPN-mobilenet_v3_small": _extractor(_fpn_mobilenet, 64, ("neck",)),
    "torchvision-features/SSDLiteFeatureExtractorMobileNet": _extractor(_ssdlite_body, 64, ("neck",)),
    "torchvision-features/ssdlite320_mobilenet_v3_large": _ssdlite_detector(),
}


def library_of(key: str) -> str:
    """The library short name of a sample key (``"smp/Unet-resnet18"`` -> ``"smp"``)."""
    return key.partition("/")[0]


def library_check(key: str) -> dict[str, object]:
    """Builds the sample ``key``, detects its groups and checks them: ``status`` is ``"right"``, ``"absent"``
    (no groups: the sample says why), ``"wrong"`` (with ``problems``) or ``"not installed"``."""
    import importlib.util

    sample = LIBRARY_SAMPLES[key]
    row: dict[str, object] = {"library": library_of(key), "model": key.partition("/")[2], "problems": []}
    if importlib.util.find_spec(LIBRARIES[library_of(key)]) is None:
        return {**row, "status": "not installed"}
    try:
        model = sample.build()
        groups = detect_groups(model)
        if sample.absent:
            problems = [f"groups {list(groups)} where none was expected"] if groups else []
            return {**row, "status": "wrong" if problems else "absent", "problems": problems or [sample.absent]}
        problems = sample.check(model, groups) if groups else ["no groups"]
    except Exception as e:  # a model that fails to build, detect or check is wrong, not fatal
        problems = [f"{type(e).__name__}: {e}"]
    return {**row, "status": "wrong" if problems else "right", "problems": problems}
