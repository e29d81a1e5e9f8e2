"""Every torchvision model and every timm classifier (or ``features_only`` backbone), built on the meta device (no
memory, no weights), each checked against the oracles of ``tools/oracles/classifiers.py``:

* ``head`` holds exactly the classifier: timm's ``get_classifier()`` or what its ``reset_classifier`` replaces
  (VOLO's ``reset_classifier`` replaces ``aux_head`` too: timm's own notion, accepted), a detector's predictors;
  ``backbone`` and ``head`` (with a detector's or segmenter's task groups) split the parameters;
* ``stem`` exists, unless the model's library names none (its ``group_matcher`` names no stem, or it has none);
  stem and stages split the backbone, each block inside one stage;
* with ``features_only``: stem, stages and blocks equal those of the same architecture built as a classifier;
* torchvision's FPN detectors: ``trainable_backbone_layers_N`` freezes what torchvision's own rule freezes;
* a sample of small real models (``FORWARD_SAMPLE``): stages and blocks run in forward order.

    python tools/sweep.py torchvision                  # 121 models
    python tools/sweep.py timm                         # 1,371 classifiers (about 5 minutes)
    python tools/sweep.py timm --features-only         # the same as feature backbones (about 10 minutes)
    python tools/sweep.py timm --family-sample         # one timm model per family
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import nn
from tqdm import tqdm

from freezable._models import build_model
from freezable.detect import detect_groups
from tools.oracles.classifiers import (
    classifier_notions,
    features_only_problems,
    head_problems,
    split_problems,
    stage_problems,
    stem_absence,
    trainable_layers_body,
    trainable_layers_problems,
)
from tools.oracles.groups import Groups, staged
from tools.oracles.order import FORWARD_SAMPLE, forward_order_problems

from .report import Row, row

__all__ = ["model_names", "check_classifier", "check_features", "sweep", "forward_sample"]


def model_names(source: str, family_sample: bool = False) -> list[str]:
    """Every model of ``source`` ("timm" or "torchvision"; torchvision: every task), or one per timm family."""
    if source == "torchvision":
        import torchvision

        return torchvision.models.list_models()
    import timm

    names = timm.list_models()
    if not family_sample:
        return names
    families: dict[str, str] = {}
    for name in names:
        families.setdefault(timm.models.model_entrypoint(name).__module__.rpartition(".")[2], name)
    return sorted(families.values())


def check_classifier(model: nn.Module, groups: Groups) -> tuple[list[str], list[str]]:
    """``(absent, wrong)``: the documented absences and the disagreements of a classifier's groups, in words."""
    wrong = head_problems(model, groups)
    has_classifier = any(classifier_notions(model).values())
    absent = [] if has_classifier or "head" in groups else ["no head: the model has no classifier"]
    if "stem" not in groups:
        why = stem_absence(model)
        if why:
            absent.append(f"no stem{'' if staged(groups, 'stage') else ' or stages'}: {why}")
        elif not has_classifier:
            absent = [f"no head or stem: the model has no classifier (its groups: {', '.join(groups) or 'none'})"]
        else:
            wrong.append("no stem, though its library names one" if hasattr(model, "pretrained_cfg")
                         else "no stem, though the model is a classifier")
    if "backbone" in groups:
        wrong += split_problems(model, groups)
    return absent, wrong + stage_problems(model, groups)


def check_features(features: nn.Module, ours: Groups, classifier: nn.Module, theirs: Groups) -> tuple[list[str],
                                                                                                   list[str]]:
    """``(absent, wrong)`` of a ``features_only`` backbone against the same architecture built as a classifier."""
    problems = features_only_problems(features, ours, classifier, theirs)
    if problems != ["no stages"]:
        return [], problems
    if staged(theirs, "stage"):
        return [], [f"no stages, though its classifier has {len(staged(theirs, 'stage'))}"]
    return [f"no stages, as its classifier has none: {stem_absence(classifier) or 'no stages of its own'}"], []


def sweep(source: str, names: Iterable[str], features_only: bool = False, progress: bool = True) -> list[Row]:
    """A row per model named (never raises: a model that fails to build, detect or check is wrong)."""
    label = f"{source} features_only" if features_only else source
    rows = []
    for name in tqdm(list(names), desc=label, disable=not progress, file=sys.stderr):
        try:
            model = build_model(f"{source}/{name}", features_only=features_only)
            groups = detect_groups(model)
            if features_only:
                classifier = build_model(f"{source}/{name}")
                absent, wrong = check_features(model, groups, classifier, detect_groups(classifier))
            else:
                absent, wrong = check_classifier(model, groups)
                if source == "torchvision" and trainable_layers_body(name) is not None:
                    wrong += trainable_layers_problems(name, lambda: build_model(f"torchvision/{name}"))
        except Exception as e:  # noqa: BLE001 - a model that fails to build or detect is wrong, not fatal
            absent, wrong = [], [f"fails to build or detect: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                                 if str(e) else f"fails to build or detect: {type(e).__name__}"]
        rows.append(row(label, name, absent, wrong))
    return rows


def forward_sample(source: str) -> list[Row]:
    """The small real models of ``FORWARD_SAMPLE`` from ``source``: stages and blocks run in forward order."""
    rows = []
    for key, (size, make) in FORWARD_SAMPLE.items():
        if key.partition("/")[0] == source:
            torch.manual_seed(0)
            model = make()
            problems = forward_order_problems(model, detect_groups(model), size)
            rows.append(row(f"{source} forward order (real input, sample)", key.partition("/")[2], wrong=problems))
    return rows
