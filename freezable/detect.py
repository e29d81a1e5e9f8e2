"""Group detection: the stem, stages, head and backbone of torchvision and timm classification models.

:func:`detect_groups` names, for any classification network, the groups every preset speaks of:

* ``stem``: the first layers, which see the input (and, for transformers, the tokens and position
  embeddings);
* ``stage1`` ... ``stageN``: the stages in forward order, where the network is built in stages;
* ``head``: the classifier;
* ``backbone``: everything but the head (an umbrella over the stem and stages).

timm models are read through their own ``group_matcher(coarse=True)`` and ``pretrained_cfg["classifier"]``;
torchvision models through a rule per family; anything else through a generic rule. Transformers with a
flat list of blocks (more than 8 coarse groups) get their blocks split into 4 stages of equal size.
Parameters that no stage takes (a final norm, say) belong to ``backbone`` only. Detection reads names,
types and constructor settings only, so it works on models built on the meta device.
"""

from __future__ import annotations

import collections.abc
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import chain

from torch import nn

from .hf_groups import hf_groups

__all__ = ["detect_groups"]

_MAX_STAGES = 8  # more coarse block groups than this are split into 4 stages
_HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear", "logits")


def detect_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Names the stem, stages, head and backbone of a classification model.

    Args:
        model: a torchvision or timm classification model (any ``nn.Module`` is accepted).

    Returns:
        An ordered dict ``stem, stage1 ... stageN, head, backbone`` of exact module and parameter
        names relative to ``model``; groups that the model does not have are left out. A model with
        neither a classifier nor stages gets ``backbone`` alone, covering everything.

    Example:
        >>> import torch, torchvision
        >>> with torch.device("meta"):
        ...     groups = detect_groups(torchvision.models.resnet18())
        >>> groups["stem"], groups["stage1"], groups["head"]
        (('conv1', 'bn1', 'relu', 'maxpool'), ('layer1',), ('fc',))
    """
    hf = hf_groups(model)
    if hf is not None:
        return hf
    if _is_timm(model):
        labels = _timm_labels(model)
    else:
        rule = _TORCHVISION_RULES.get(type(model).__name__) if _is_torchvision(model) else None
        labels = rule(model) if rule is not None else _generic_labels(model)
    return _to_groups(model, labels)


# -- labelling: each model's parameters (and some parameter-free modules) get a group label ----------

Labels = dict[str, str]  # module or parameter name -> "stem" | "stageK" | "head"


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def _timm_labels(model: nn.Module) -> Labels:
    labels: Labels = {}
    head = _timm_head(model)
    matcher = _timm_matcher(model)
    if matcher is None:
        return _generic_labels(model, head)
    ordinal = _ordinal_fn(matcher)
    by_ordinal: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        if _within(name, head):
            continue
        by_ordinal[ordinal(name)].append(name)
    stem_ordinal = _stem_ordinal(model, matcher, ordinal, head)
    blocks: list[list[str]] = []
    for key in sorted(by_ordinal):
        names = by_ordinal[key]
        if key[0] == float("inf"):
            continue  # neck and final norm: backbone only
        if stem_ordinal is not None and key[0] == stem_ordinal:
            labels.update((n, "stem") for n in names)
        elif key[-1] == 99999 and blocks:  # timm's MATCH_PREV_GROUP
            blocks[-1].extend(names)
        else:
            blocks.append(list(names))
    for stage, names in enumerate(_as_stages(blocks), start=1):
        labels.update((n, f"stage{stage}") for n in names)
    labels.update((name, "head") for name in head)
    return labels


def _timm_matcher(model: nn.Module) -> dict | Callable | None:
    """``group_matcher(coarse=True)``, else the fine one (some models implement only that), else None."""
    if not hasattr(model, "group_matcher"):
        return None
    for coarse in (True, False):
        try:
            return model.group_matcher(coarse=coarse)
        except (AssertionError, NotImplementedError, TypeError):
            continue
    return None


def _stem_ordinal(model: nn.Module, matcher: dict | Callable, ordinal: Callable, head: list[str]) -> float | None:
    """The ordinal of the stem: the first group of a dict matcher named ``stem*``, or, for a callable
    matcher, the group of the first parameter when no group comes before it."""
    if isinstance(matcher, dict):
        return 0.0 if str(next(iter(matcher), "")).startswith("stem") else None
    keys = [ordinal(n)[0] for n, _ in model.named_parameters() if not _within(n, head)]
    return keys[0] if keys and keys[0] == min(keys) else None


def _timm_head(model: nn.Module) -> list[str]:
    """The classifier: ``get_classifier()``'s modules with parameters, and ``pretrained_cfg["classifier"]``."""
    module_names = {id(m): n for n, m in model.named_modules()}
    names: list[str] = []
    if hasattr(model, "get_classifier"):
        try:
            found = model.get_classifier()
        except Exception:  # some models' get_classifier needs state they lack
            found = None
        for module in found if isinstance(found, (tuple, list)) else (found,):
            if isinstance(module, nn.Module) and id(module) in module_names and any(True for _ in module.parameters()):
                names.append(module_names[id(module)])
    classifier = model.pretrained_cfg.get("classifier") if isinstance(model.pretrained_cfg, dict) else None
    known = set(module_names.values()) | set(dict(model.named_parameters()))
    for name in [classifier] if isinstance(classifier, str) else list(classifier or ()):
        if name in known and not _within(name, names):
            names.append(name)
    names = [n for n in names if not any(_within(n, [other]) for other in names if other != n)]
    return names or _generic_head(model)


def _ordinal_fn(matcher: dict | Callable) -> Callable[[str], tuple[float, ...]]:
    """timm's ``group_with_matcher`` ordinals: (group, captured indices..., suffix)."""
    if callable(matcher) and not isinstance(matcher, dict):
        def from_callable(name: str) -> tuple[float, ...]:
            value = matcher(name)
            return tuple(map(float, value)) if isinstance(value, collections.abc.Iterable) else (float(value),)

        return from_callable
    compiled = []
    for index, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for pattern, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            compiled.append((re.compile(pattern), (index,), suffix))

    def from_dict(name: str) -> tuple[float, ...]:
        for pattern, prefix, suffix in compiled:
            match = pattern.match(name)
            if match:
                parts = (prefix, match.groups(), suffix)
                return tuple(map(float, chain.from_iterable(p for p in parts if p)))
        return (float("inf"),)

    return from_dict


def _as_stages(blocks: list[list[str]]) -> list[list[str]]:
    """Block groups as stages: as they are, or a flat list of many blocks split into 4 even stages."""
    if len(blocks) <= _MAX_STAGES:
        return blocks
    n = len(blocks)
    return [[name for block in blocks[i * n // 4:(i + 1) * n // 4] for name in block] for i in range(4)]


# -- torchvision: a rule per family ---------------------------------------------------------------


def _label_children(labels: Labels, prefix: str, names: Sequence[str], label: str) -> None:
    labels.update((f"{prefix}{n}", label) for n in names)


def _tv_resnet(model: nn.Module) -> Labels:
    labels = {n: "stem" for n in ("conv1", "bn1", "relu", "maxpool")}
    labels.update({f"layer{i}": f"stage{i}" for i in range(1, 5)})
    labels["fc"] = "head"
    return labels


def _tv_split_at_pools(model: nn.Module) -> Labels:
    """AlexNet, VGG, SqueezeNet: ``features`` split after each max-pool; the first piece is the stem."""
    labels: Labels = {}
    piece = 0
    for name, child in model.features.named_children():
        labels[f"features.{name}"] = "stem" if piece == 0 else f"stage{piece}"
        if isinstance(child, nn.MaxPool2d):
            piece += 1
    labels["classifier"] = "head"
    return labels


def _tv_split_at_downsampling(model: nn.Module, container: str = "features", stem: int = 1) -> Labels:
    """MobileNet, EfficientNet, MNASNet, ConvNeXt, Swin: a flat sequence split where resolution drops."""
    labels: Labels = {}
    stage = 0
    for index, (name, child) in enumerate(getattr(model, container).named_children()):
        if index < stem:
            labels[f"{container}.{name}"] = "stem"
            continue
        if stage == 0 or _downsamples(child):
            stage += 1
        labels[f"{container}.{name}"] = f"stage{stage}"
    labels["classifier" if hasattr(model, "classifier") else "head"] = "head"
    return labels


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if "PatchMerging" in type(m).__name__:
            return True
        stride = getattr(m, "stride", 1)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and max(_pair(stride)) > 1:
            return True
    return False


def _pair(value: object) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


def _tv_densenet(model: nn.Module) -> Labels:
    labels: Labels = {}
    stage = 0
    for name, _ in model.features.named_children():
        if name.startswith("denseblock"):
            stage = int(name[len("denseblock"):])
        if name != "norm5":
            labels[f"features.{name}"] = "stem" if stage == 0 else f"stage{stage}"
    labels["classifier"] = "head"
    return labels


def _tv_by_prefix(stem: Sequence[str], stages: Sequence[Sequence[str]], head: Sequence[str]) -> Callable:
    def rule(model: nn.Module) -> Labels:
        children = dict(model.named_children())
        labels = {n: "stem" for n in stem if n in children}
        for index, names in enumerate(stages, start=1):
            labels.update((n, f"stage{index}") for n in names if n in children)
        labels.update((n, "head") for n in head if children.get(n) is not None)
        return labels

    return rule


def _tv_regnet(model: nn.Module) -> Labels:
    labels = {"stem": "stem", "fc": "head"}
    labels.update((f"trunk_output.{n}", f"stage{i}") for i, (n, _) in enumerate(model.trunk_output.named_children(), 1))
    return labels


def _tv_maxvit(model: nn.Module) -> Labels:
    labels = {"stem": "stem", "classifier": "head"}
    labels.update((f"blocks.{i}", f"stage{i + 1}") for i in range(len(model.blocks)))
    return labels


def _tv_vit(model: nn.Module) -> Labels:
    labels = {"conv_proj": "stem", "class_token": "stem", "encoder.pos_embedding": "stem", "encoder.dropout": "stem",
              "heads": "head"}
    blocks = [[f"encoder.layers.{n}"] for n, _ in model.encoder.layers.named_children()]
    for stage, names in enumerate(_as_stages(blocks) if len(blocks) > 4 else blocks, start=1):
        labels.update((n, f"stage{stage}") for n in names)
    return labels


def _tv_mnasnet(model: nn.Module) -> Labels:
    return _tv_split_at_downsampling(model, container="layers", stem=8)


_TORCHVISION_RULES: dict[str, Callable[[nn.Module], Labels]] = {
    "ResNet": _tv_resnet,
    "AlexNet": _tv_split_at_pools,
    "VGG": _tv_split_at_pools,
    "SqueezeNet": _tv_split_at_pools,
    "DenseNet": _tv_densenet,
    "MobileNetV2": _tv_split_at_downsampling,
    "MobileNetV3": _tv_split_at_downsampling,
    "EfficientNet": _tv_split_at_downsampling,
    "ConvNeXt": _tv_split_at_downsampling,
    "SwinTransformer": _tv_split_at_downsampling,
    "MNASNet": _tv_mnasnet,
    "RegNet": _tv_regnet,
    "MaxVit": _tv_maxvit,
    "VisionTransformer": _tv_vit,
    "GoogLeNet": _tv_by_prefix(
        stem=("conv1", "maxpool1", "conv2", "conv3", "maxpool2"),
        stages=(("inception3a", "inception3b", "maxpool3"),
                ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
                ("inception5a", "inception5b")),
        head=("fc", "aux1", "aux2"),
    ),
    "Inception3": _tv_by_prefix(
        stem=("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "maxpool2"),
        stages=(("Mixed_5b", "Mixed_5c", "Mixed_5d"), ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
                ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
        head=("fc", "AuxLogits"),
    ),
    "ShuffleNetV2": _tv_by_prefix(stem=("conv1", "maxpool"), stages=(("stage2",), ("stage3",), ("stage4", "conv5")),
                                  head=("fc",)),
}


# -- the generic rule -----------------------------------------------------------------------------


def _generic_head(model: nn.Module) -> list[str]:
    children = dict(model.named_children())
    for name in reversed(list(children)):
        if name in _HEAD_NAMES and any(True for _ in children[name].parameters()):
            return [name]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


_STAGE_CONTAINERS = ("stages", "dense_stages", "layers", "blocks", "features")


def _generic_labels(model: nn.Module, head: list[str] | None = None) -> Labels:
    """The head; the first child with parameters as the stem; and, where the model keeps its stages in a
    container child (``stages``, ``layers``, ``blocks``...), each of that container's children as a stage
    (a long flat list split into 4), with the children before it joining the stem."""
    head = _generic_head(model) if head is None else head
    labels: Labels = {name: "head" for name in head}
    children = [(n, c) for n, c in model.named_children() if not _within(n, head) and _has_params(c)]
    container = next((n for n, c in children if n in _STAGE_CONTAINERS and isinstance(c, (nn.Sequential, nn.ModuleList))
                      and sum(_has_params(s) for s in c.children()) >= 2), None)
    if container is None:
        if children:
            labels[children[0][0]] = "stem"
        return labels
    labels.update((n, "stem") for n, _ in children[: [n for n, _ in children].index(container)])
    blocks = [[f"{container}.{n}"] for n, c in model.get_submodule(container).named_children() if _has_params(c)]
    for stage, names in enumerate(_as_stages(blocks), start=1):
        labels.update((n, f"stage{stage}") for n in names)
    return labels


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# -- from labels to groups ------------------------------------------------------------------------


def _within(name: str, ancestors: Sequence[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ancestors)


def _to_groups(model: nn.Module, labels: Labels) -> dict[str, tuple[str, ...]]:
    """The coarsest names that cover each label's parameters, plus the backbone umbrella."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    # every parameter's label: its own, or the nearest labelled ancestor module's
    param_label: dict[str, str | None] = {}
    for pname in params:
        parts = pname.split(".")
        param_label[pname] = next(
            (labels[".".join(parts[:i])] for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in labels), None
        )
    # label sets of every module's parameters; a module is pure when all of its parameters share one label
    seen: dict[str, set[str | None]] = defaultdict(set)
    for pname, label in param_label.items():
        parts = pname.split(".")
        for i in range(1, len(parts)):
            seen[".".join(parts[:i])].add(label)

    def pure(name: str) -> str | None:
        if name in seen:
            found = seen[name]
            return next(iter(found)) if len(found) == 1 else None
        return labels.get(name)  # a parameter-free module: its own label, if any

    members: dict[str, list[str]] = defaultdict(list)
    previous: str | None = None  # label of the last top-level child seen
    for name in modules:
        if not name:
            continue
        label = pure(name)
        parent = name.rpartition(".")[0]
        if not parent:  # a parameter-free top-level child (activation, pooling, dropout) joins the one before it
            if label is None and name not in seen and previous not in (None, "head"):
                label = previous
            previous = label
        if label is not None and (not parent or pure(parent) != label):
            members[label].append(name)
    for pname, label in param_label.items():
        owner = pname.rpartition(".")[0]
        if label is not None and (not owner or pure(owner) != label):
            members[label].append(pname)

    order = ["stem"] + sorted((k for k in members if k.startswith("stage")), key=lambda k: int(k[5:])) + ["head"]
    groups = {label: tuple(members[label]) for label in order if members.get(label)}
    head = groups.get("head", ())
    if not head and not any(label.startswith("stage") for label in groups):
        return {"backbone": tuple(_complement(model, ()))}  # neither classifier nor stages: one group
    backbone = _complement(model, head)
    if backbone:  # a model that is all head (a lone Linear) has no backbone
        groups["backbone"] = tuple(backbone)
    return groups


def _complement(model: nn.Module, head: Sequence[str], prefix: str = "") -> list[str]:
    """Top-most names of everything in ``model`` outside ``head`` (parameters it owns directly included)."""
    names: list[str] = []
    for pname, _ in model.named_parameters(recurse=False):
        full = prefix + pname
        if not _within(full, head):
            names.append(full)
    for cname, child in model.named_children():
        full = prefix + cname
        if _within(full, head):
            continue
        if any(h.startswith(full + ".") for h in head):
            names += _complement(child, head, full + ".")
        else:
            names.append(full)
    return names
