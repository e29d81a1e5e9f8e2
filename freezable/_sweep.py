"""Sweeps group detection over every torchvision and timm classification model, on the meta device.

    python -m freezable sweep all                   # every model: torchvision 80, timm 1,371 (~5 min)
    python -m freezable sweep timm --family-sample  # one timm model per family

Each model is built with ``pretrained=False`` on the meta device (no memory, no weights) and checked
against the oracles of :mod:`freezable._oracles` (shared with the tests): ``head`` holds exactly the
classifier's parameters, ``backbone`` and ``head`` split the parameters between them with no overlap and
nothing left over, ``stem`` exists, stem and stages split the backbone with each block inside one stage;
with ``--features-only``, the stem and stages equal those of the same architecture built as a classifier;
torchvision detectors' ``trainable_backbone_layers_N`` presets freeze what torchvision's rule freezes; and,
for a sample of small models built for real (``FORWARD_SAMPLE``), the stages and blocks run in forward order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from torch import nn
from tqdm import tqdm

from . import _oracles
from ._models import build_model
from .detect import detect_groups

__all__ = ["sweep", "check_groups", "model_names", "run", "add_arguments", "run_from_args"]


def model_names(source: str, family_sample: bool = False) -> list[str]:
    """Every classification model of ``source`` ("timm" or "torchvision"), or one per timm family."""
    if source == "torchvision":
        import torchvision

        return torchvision.models.list_models()
    import timm

    names = timm.list_models()
    if not family_sample:
        return names
    families: dict[str, str] = {}
    for name in names:
        families.setdefault(_family(name), name)
    return sorted(families.values())


def _family(name: str) -> str:
    import timm

    return timm.models.model_entrypoint(name).__module__.rpartition(".")[2]


def check_groups(model: nn.Module, groups: dict[str, tuple[str, ...]] | None = None) -> dict[str, object]:
    """Detects the model's groups (unless given) and checks what they claim (see the module docstring)."""
    groups = detect_groups(model) if groups is None else groups
    params = {id(p) for p in model.parameters()}  # by identity: a shared module's parameters have two names

    def members(group: str) -> set[int]:
        return _oracles.ids(model, groups, group)

    head, backbone = members("head"), members("backbone")
    stages = _oracles.staged(groups, "stage")
    tasks = members("neck") | members("rpn") | members("roi_heads") | members("aux_head")
    problems = _oracles.stage_problems(model, groups)
    return {
        "ok_backbone_head": bool(head) and _oracles.classifier_parameters(model) == head
        and not head & backbone and head | backbone | tasks == params,
        "has_stem": "stem" in groups,
        "n_stages": len(stages),
        "n_blocks": len(_oracles.staged(groups, "block")),
        "stages_cover_backbone": bool(stages) and not problems,
        "problems": problems,
    }


def sweep(source: str, names: Iterable[str] | None = None, progress: bool = True,
          features_only: bool = False) -> list[dict[str, object]]:
    """Checks every model named (default: all of ``source``); a row per model."""
    names = model_names(source) if names is None else list(names)
    rows = []
    for name in tqdm(names, desc=source, disable=not progress, file=sys.stderr):
        row: dict[str, object] = {"source": source, "model": name, "error": None}
        try:
            model = build_model(f"{source}/{name}", features_only=features_only)
            groups = detect_groups(model)
            row.update(check_groups(model, groups))
            if features_only:  # no head: the classifier's stem and stages are the check
                classifier = build_model(f"{source}/{name}")
                row["problems"] = _oracles.features_only_problems(model, groups, classifier, detect_groups(classifier))
                row["ok_backbone_head"] = row["stages_cover_backbone"] = not row["problems"]
            elif source == "torchvision" and _oracles.trainable_layers_body(name) is not None:
                presets = _oracles.trainable_layers_problems(name, lambda: build_model(f"torchvision/{name}"))
                row["presets_ok"] = not presets
                row["problems"] = [*row["problems"], *presets]
        except Exception as e:  # a model that fails to build or detect is reported, not fatal
            row.update(ok_backbone_head=False, has_stem=False, n_stages=0, stages_cover_backbone=False,
                       problems=[], error=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def report(rows: list[dict[str, object]], source: str, features_only: bool = False) -> str:
    n = len(rows)
    ok = sum(bool(r["ok_backbone_head"]) for r in rows)
    stem = sum(bool(r["has_stem"]) for r in rows)
    staged = sum(bool(r["has_stem"] and r["n_stages"]) for r in rows)
    covered = sum(bool(r.get("stages_cover_backbone")) for r in rows)
    if features_only:  # no head: the check is the classifier's stem and stages
        return (f"{source} features_only: {ok}/{n} models whose stem and stages are the classifier's "
                f"({100 * ok / n:.1f}%), {staged} with stem and stages, {n - staged} without (absent)")
    lines = [f"{source}: {ok}/{n} models with the right head ({100 * ok / n:.1f}%), "
             f"{stem} with a stem, {staged} with stem and stages, {covered} whose stages cover the backbone"]
    presets = [r for r in rows if "presets_ok" in r]
    if presets:
        lines.append(f"  trainable_backbone_layers_N = torchvision's rule for every N: "
                     f"{sum(bool(r['presets_ok']) for r in presets)}/{len(presets)} detectors")
    return "\n".join(lines)


def forward_sample(source: str) -> list[dict[str, object]]:
    """Builds the small real models of ``FORWARD_SAMPLE`` for ``source`` and checks their forward order."""
    rows = []
    for key, (size, make) in _oracles.FORWARD_SAMPLE.items():
        if key.partition("/")[0] == source:
            model = make()
            rows.append({"model": key, "problems": _oracles.forward_order_problems(model, detect_groups(model), size)})
    return rows


def run(sources: list[str], family_sample: bool = False, models: list[str] | None = None, progress: bool = True,
        features_only: bool = False) -> int:
    """Sweeps and prints the coverage of each source; returns 1 when a model lacks a stem, backbone or head,
    or an oracle disagrees with its groups."""
    failed = False
    for source in sources:
        rows = sweep(source, models or model_names(source, family_sample), progress=progress,
                     features_only=features_only)
        print(report(rows, source, features_only))
        for row in rows:
            if not (row["ok_backbone_head"] and row["has_stem"]) or row["problems"]:
                failed = True
                print(f"  {row['model']}: backbone/head={row['ok_backbone_head']} stem={row['has_stem']} "
                      f"error={row['error']}" + "".join(f"; {p}" for p in row["problems"]))
        if not models and not features_only:
            order = forward_sample(source)
            print(f"  stages and blocks in forward order (real input): "
                  f"{sum(not r['problems'] for r in order)}/{len(order)} sample models")
            for row in order:
                if row["problems"]:
                    failed = True
                    print(f"  {row['model']}: " + "; ".join(row["problems"]))
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=["timm", "torchvision", "all"])
    parser.add_argument("--family-sample", action="store_true", help="one timm model per family")
    parser.add_argument("--models", nargs="+", metavar="NAME", help="only these models (of one source)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--features-only", action="store_true", help="timm models built with features_only=True")


def run_from_args(args: argparse.Namespace) -> int:
    sources = ["torchvision", "timm"] if args.source == "all" else [args.source]
    return run(sources, args.family_sample, args.models, progress=not args.no_progress,
               features_only=args.features_only)

