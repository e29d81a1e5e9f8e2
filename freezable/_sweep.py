"""Sweeps group detection over every torchvision and timm classification model, on the meta device.

    python -m freezable sweep all                   # every model: torchvision 80, timm 1,371 (~5 min)
    python -m freezable sweep timm --family-sample  # one timm model per family

Each model is built with ``pretrained=False`` on the meta device (no memory, no weights) and checked:
``head`` holds the classifier's parameters, ``backbone`` and ``head`` split the parameters between them
with no overlap and nothing left over, ``stem`` exists, and how many stages there are.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from torch import nn
from tqdm import tqdm

from ._models import build_model
from .detect import detect_groups
from .groups import resolve_group

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


def classifier_parameters(model: nn.Module) -> set[int]:
    """The classifier's parameters (by identity): timm's ``get_classifier()``; torchvision: the predictors of
    a detector, else the ``classifier``/``fc``/``head``/``heads`` attribute (with Inception's aux heads)."""
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
    return {id(p) for n in names for p in model.get_submodule(n).parameters()}


def check_groups(model: nn.Module) -> dict[str, object]:
    """Detects the model's groups and checks what they claim (see the module docstring)."""
    groups = detect_groups(model)
    params = {id(p) for p in model.parameters()}  # by identity: a shared module's parameters have two names

    def members(group: str) -> set[int]:
        if group not in groups:
            return set()
        return {id(p) for _, p in resolve_group(model, group, list(groups[group])).named_parameters(model)}

    head, backbone = members("head"), members("backbone")
    stages = [g for g in groups if g.startswith("stage")]
    staged = members("stem").union(*(members(s) for s in stages))
    tasks = members("neck") | members("rpn") | members("roi_heads") | members("aux_head")
    return {
        "ok_backbone_head": bool(head) and classifier_parameters(model) == head
        and not head & backbone and head | backbone | tasks == params,
        "has_stem": "stem" in groups,
        "n_stages": len(stages),
        "n_blocks": sum(g.startswith("block") for g in groups),
        "stages_in_backbone": staged <= backbone,
        "stages_cover_backbone": bool(stages) and staged == backbone - members("neck"),
    }


def sweep(source: str, names: Iterable[str] | None = None, progress: bool = True,
          features_only: bool = False) -> list[dict[str, object]]:
    """Checks every model named (default: all of ``source``); a row per model."""
    names = model_names(source) if names is None else list(names)
    rows = []
    for name in tqdm(names, desc=source, disable=not progress, file=sys.stderr):
        row: dict[str, object] = {"source": source, "model": name, "error": None}
        try:
            row.update(check_groups(build_model(f"{source}/{name}", features_only=features_only)))
            if features_only:  # no head: the stages are the check
                row["ok_backbone_head"] = row["stages_cover_backbone"]
        except Exception as e:  # a model that fails to build or detect is reported, not fatal
            row.update(ok_backbone_head=False, has_stem=False, n_stages=0, stages_cover_backbone=False,
                       error=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def report(rows: list[dict[str, object]], source: str) -> str:
    n = len(rows)
    ok = sum(bool(r["ok_backbone_head"]) for r in rows)
    stem = sum(bool(r["has_stem"]) for r in rows)
    staged = sum(bool(r["has_stem"] and r["n_stages"]) for r in rows)
    covered = sum(bool(r.get("stages_cover_backbone")) for r in rows)
    return (f"{source}: {ok}/{n} models with the right head ({100 * ok / n:.1f}%), "
            f"{stem} with a stem, {staged} with stem and stages, {covered} whose stages cover the backbone")


def run(sources: list[str], family_sample: bool = False, models: list[str] | None = None, progress: bool = True,
        features_only: bool = False) -> int:
    """Sweeps and prints the coverage of each source; returns 1 when a model lacks a stem, backbone or head."""
    failed = False
    for source in sources:
        rows = sweep(source, models or model_names(source, family_sample), progress=progress,
                     features_only=features_only)
        print(report(rows, source))
        for row in rows:
            if not (row["ok_backbone_head"] and row["has_stem"]):
                failed = True
                print(f"  {row['model']}: backbone/head={row['ok_backbone_head']} stem={row['has_stem']} "
                      f"error={row['error']}")
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

