"""The order groups run in on a real input: a forward pre-hook on each group's modules records which runs first.

Stem, stages, head and blocks must run in group order (``forward_order_problems``, on a sample of small real
models, ``FORWARD_SAMPLE``); so must each part's stem, stages and blocks in a model of several parts
(``part_forward_problems``) and any named lists of groups (``part_order_problems``: a library's sections, a UNet's
blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from freezable.groups import part_of

from .groups import Groups, parts, staged

__all__ = ["run_order", "forward_order", "FORWARD_SAMPLE", "forward_order_problems", "part_order_problems",
           "part_forward_problems"]


def run_order(model: nn.Module, groups: Groups, names: list[str], run: Callable[[], object]) -> list[str]:
    """The named groups in the order their first module runs during ``run()`` (forward pre-hooks, no grad);
    a group none of whose modules runs is left out, and so is a group of parameters alone (a ViT's
    ``class_embedding``: no hook sees it)."""
    first: dict[str, int] = {}
    modules = dict(model.named_modules())
    handles = []
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    for group in names:
        for member in groups[group]:
            # a member that holds parameters, and every module inside it: a traced graph calls its leaves, never
            # the containers that hold them; not those shared with other places (ultralytics' one SiLU in every
            # Conv runs first in layer 0)
            if member not in modules or not any(True for _ in modules[member].parameters()):
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


def forward_order(model: nn.Module, groups: Groups, names: list[str], x: torch.Tensor) -> list[str]:
    """The named groups in the order their first module runs on ``x`` (forward pre-hooks, no grad)."""
    return run_order(model, groups, names, lambda: model(x))


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


def part_order_problems(model: nn.Module, groups: Groups, lists: dict[str, list[str]],
                        run: Callable[[], object]) -> list[str]:
    """Each named list of groups (label -> group names, in group order) runs in that order during ``run()``, every
    one of them (forward pre-hooks on a real input)."""
    problems = []
    for label, names in lists.items():
        names = [n for n in names if n in groups]
        order = run_order(model, groups, names, run)
        if order != names:
            problems.append(f"{label}: groups run in the order {order}, not {names}")
    return problems


def part_forward_problems(model: nn.Module, groups: Groups, run: Callable[[nn.Module], Any]) -> list[str]:
    """Each part's ``stem, stage1 .. stageN`` and its ``block1 .. blockM`` run in that order when ``run(model)``
    calls a real forward (a single-stack model: the plain names). A group whose members are parameters alone is
    left out of the order (no hook sees it); every other group must run."""
    modules = dict(model.named_modules())
    lists = {}
    for part in parts(groups) or [""]:
        named = [g for g in groups if part_of(g)[0] == part and part_of(g)[1]]
        for label, kinds in (("stages", ("stem", "stage")), ("blocks", ("block",))):
            lists[f"{part or 'the model'} {label}"] = [g for g in named if part_of(g)[1] in kinds and any(
                m in modules and any(True for _ in modules[m].parameters()) for m in groups[g])]
    return part_order_problems(model.eval(), groups, lists, lambda: run(model))
