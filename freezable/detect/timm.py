"""timm models: classifiers read through their own ``group_matcher``, feature backbones through their classifier.

* ``stem`` and stages come from ``group_matcher(coarse=True)`` (a flat list of more than 8 block groups is
  split into 4 stages of equal size); the head is the classifier (``get_classifier()`` and
  ``pretrained_cfg["classifier"]``); a final norm goes with the last stage.
* ``block1 ... blockN`` are timm's fine layer ids, those ``timm.optim.param_groups_layer_decay`` uses:
  layer id 0 is the stem, layer id i is block i, the head's id (parameters the fine matcher leaves
  unmatched) is no block.
* ``features_only=True`` models (FeatureListNet, FeatureDictNet, FeatureHookNet, FeatureGetterNet, and
  feature classes of their own without a ``group_matcher``, such as EfficientNetFeatures) get the groups
  of the same architecture built as a classifier, on the meta device, restricted to the parameters the
  feature model has and mapped onto its names; they have no ``head``. FeatureGetterNet holds a pruned
  classifier (its ``model``), FeatureHookNet may hold the whole one (its ``body``): read on its own, a pruned
  classifier's flat block list would be split into other stages than the classifier's (XCiT and VOLO lose
  their class-attention blocks), hence the classifier's groups there too. When none of them maps onto the
  feature model, it gets no groups: absent, not the inner model's own.
"""

from __future__ import annotations

import collections.abc
import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from itertools import chain

import torch
from torch import nn

from ..groups import is_within, top_most
from ._parts import Groups, Parts, assemble, compact, param_names

__all__ = ["timm_groups", "is_timm", "is_timm_features"]

_MAX_STAGES = 8  # more coarse block groups than this are split into 4 stages
_FEATURE_WRAPPERS = ("FeatureListNet", "FeatureDictNet", "FeatureHookNet", "FeatureGetterNet")


def is_timm(model: nn.Module) -> bool:
    """Whether ``model`` is a timm model (a classifier or feature backbone built by ``timm.create_model``)."""
    return type(model).__module__.startswith("timm.") and isinstance(getattr(model, "pretrained_cfg", None), dict)


def is_timm_features(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``features_only`` model that detection reads through its classifier.

    Example:
        >>> import timm, torch
        >>> with torch.device("meta"):
        ...     print(is_timm_features(timm.create_model("resnet18", features_only=True)),
        ...           is_timm_features(timm.create_model("resnet18")))
        True False
    """
    return is_timm(model) and (type(model).__name__ in _FEATURE_WRAPPERS or type(model).__name__.endswith(
        "Features") and not hasattr(model, "group_matcher"))


def timm_groups(model: nn.Module) -> Groups | None:
    """The groups of a timm model, or ``None`` when ``model`` is not one.

    Example:
        >>> import timm, torch
        >>> with torch.device("meta"):
        ...     groups = timm_groups(timm.create_model("resnet18", features_only=True))
        >>> groups["stem"], groups["stage4"], "head" in groups
        (('conv1', 'bn1'), ('layer4',), False)
    """
    if not is_timm(model):
        return None
    if is_timm_features(model):  # a wrapper, or a feature class of its own (EfficientNetFeatures)
        return _feature_groups(model)
    return assemble(model, _classifier_parts(model))


# -- classifiers -------------------------------------------------------------------------------------


def _classifier_parts(model: nn.Module) -> Parts:
    head = _head(model)
    parts = Parts(head=head)
    matcher = _matcher(model, coarse=True)
    if matcher is None:
        return parts  # no stages: the head and backbone alone
    ordinal = _ordinal_fn(matcher)
    by_ordinal: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        if not is_within(name, head):
            by_ordinal[ordinal(name)].append(name)
    stem_ordinal = _stem_ordinal(model, matcher, ordinal, head)
    blocks: list[list[str]] = []
    stem: list[str] = []
    for key in sorted(by_ordinal):
        names = by_ordinal[key]
        if key[0] == float("inf"):
            continue  # the final norm: the last stage takes it
        if stem_ordinal is not None and key[0] == stem_ordinal:
            stem += names
        elif key[-1] == 99999 and blocks:  # timm's MATCH_PREV_GROUP
            blocks[-1].extend(names)
        else:
            blocks.append(list(names))
    parts.stem = list(compact(model, stem))
    parts.stages = [list(compact(model, names)) for names in _as_stages(blocks)]
    parts.blocks = [list(compact(model, names)) for names in _fine_blocks(model, head)]
    return parts


def _matcher(model: nn.Module, coarse: bool) -> dict | Callable | None:
    if not hasattr(model, "group_matcher"):
        return None
    try:
        return model.group_matcher(coarse=coarse)
    except (AssertionError, NotImplementedError, TypeError, AttributeError):
        return None


def _fine_blocks(model: nn.Module, head: list[str]) -> list[list[str]]:
    """Parameters of each of timm's fine layer ids 1 ... L (L: the last id before the head's, if any)."""
    from timm.models import group_parameters

    matcher = _matcher(model, coarse=False)
    if matcher is None:
        return []
    try:
        layer_of = group_parameters(model, matcher, reverse=True)
    except Exception:  # a matcher that does not fit the model's names (a pruned model): no blocks
        return []
    by_layer: dict[int, list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        by_layer[layer_of[name]].append(name)
    last = max(by_layer, default=0)
    ordinal = _ordinal_fn(matcher)
    top = by_layer.get(last, [])
    if last > 0 and (any(is_within(n, head) for n in top) or all(ordinal(n)[0] == float("inf") for n in top)):
        last -= 1  # the head's layer id is no block
    return [by_layer[i] for i in range(1, last + 1)]


def _stem_ordinal(model: nn.Module, matcher: dict | Callable, ordinal: Callable, head: list[str]) -> float | None:
    """The first group of a dict matcher when it is named ``stem*``; for a callable matcher, the group of
    the first parameter when no group comes before it."""
    if isinstance(matcher, dict):
        return 0.0 if str(next(iter(matcher), "")).startswith("stem") else None
    keys = [ordinal(n)[0] for n, _ in model.named_parameters() if not is_within(n, head)]
    return keys[0] if keys and keys[0] == min(keys) else None


def _head(model: nn.Module) -> list[str]:
    """The classifier: ``get_classifier()``'s modules with parameters, and ``pretrained_cfg["classifier"]``."""
    module_names = {id(m): n for n, m in model.named_modules()}
    names: list[str] = []
    found = None
    if hasattr(model, "get_classifier"):
        try:
            found = model.get_classifier()
        except Exception:  # some models' get_classifier needs state they lack
            found = None
    for module in found if isinstance(found, (tuple, list)) else (found,):
        if isinstance(module, nn.Module) and id(module) in module_names and any(True for _ in module.parameters()):
            names.append(module_names[id(module)])
    classifier = model.pretrained_cfg.get("classifier")
    params = dict(model.named_parameters())
    modules = {n: m for n, m in model.named_modules()}
    for name in [classifier] if isinstance(classifier, str) else list(classifier or ()):
        has_params = name in params or (name in modules and any(True for _ in modules[name].parameters()))
        if has_params and not is_within(name, names):
            names.append(name)
    return list(top_most(names))


def _ordinal_fn(matcher: dict | Callable) -> Callable[[str], tuple[float, ...]]:
    """timm's ``group_with_matcher`` ordinals: (group, captured indices..., suffix); unmatched: (inf,)."""
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


# -- feature backbones -------------------------------------------------------------------------------


def _feature_groups(model: nn.Module) -> Groups:
    """The classifier's stem, stages and blocks, by parameter, on the feature model's names; no head.
    None found: no groups (absent; the model inside a FeatureGetterNet or FeatureHookNet, read on its own,
    would give other groups than the classifier's)."""
    import timm

    arch = model.pretrained_cfg.get("architecture")
    if not isinstance(arch, str) or not timm.is_model(arch):
        return {}
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            classifier = timm.create_model(arch, pretrained=False)
            if getattr(classifier, "num_classes", None) == 0:  # a feature model by default: timm's usual head
                classifier = timm.create_model(arch, pretrained=False, num_classes=1000)
        except Exception:  # an architecture that does not build on the meta device: no groups
            return {}
    own = dict(model.named_parameters())
    children = dict(model.named_children())
    # FeatureGetterNet holds the classifier as ``model``, FeatureHookNet (not rewritten) as ``body``
    prefix = next((f"{n}." for n in ("model", "body") if len(children) == 1 and n in children), "")
    theirs = assemble(classifier, _classifier_parts(classifier))
    groups: Groups = {}
    for name, members in theirs.items():
        if name in ("head", "backbone"):
            continue
        mapped = [m for m in (_feature_name(p, own, prefix) for p in param_names(classifier, members)) if m is not None]
        if mapped:
            groups[name] = compact(model, mapped)
    if groups:
        groups["backbone"] = compact(model, own)
    return groups


def _feature_name(name: str, own: dict[str, nn.Parameter], prefix: str = "") -> str | None:
    """The feature model's name for the classifier's parameter ``name`` (timm flattens the first
    Sequential level, ``stages.0.x`` -> ``stages_0.x``; FeatureGetterNet and FeatureHookNet may hold the
    whole classifier under ``prefix``), or None when the feature model lacks it."""
    first, _, rest = name.partition(".")
    for candidate in (prefix + name,) if prefix else (name, first + "_" + rest):
        if candidate in own:
            return candidate
    return None
