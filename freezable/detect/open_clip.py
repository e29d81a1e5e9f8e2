"""open_clip models: the image tower and the text tower, each named as a part, read from open_clip's own classes.

An open_clip ``CLIP``, ``CustomTextCLIP`` or ``CoCa`` gets the groups of its two towers, named after them
(:func:`freezable.detect._parts.part_groups`):

* ``visual.stem``, ``visual.stage1 ...``, ``visual.block1 ...``, ``visual.head`` and the umbrella ``visual``:
  open_clip's ``VisionTransformer`` (stem: ``conv1``, class and position embeddings, ``ln_pre``; a block per
  resblock, the last with what follows it, ``ln_post``; head: the projection ``proj``: the groups its own
  ``lock()`` unlocks from the end), ``ModifiedResNet`` (the three-conv stem, ``layer1..4``, their
  bottlenecks; head: ``attnpool``) or a timm tower (``TimmModel``: the timm trunk's own groups, those timm
  gives it alone, and open_clip's projection ``head``);
* ``text.stem`` (token and position embeddings, ``cls_emb``), ``text.stage1 ...``, ``text.block1 ...`` (a
  resblock each, the last with ``ln_final``), ``text.head`` (``text_projection``) and ``text``: the text
  tower as ``lock_text_tower`` groups it, whether it is the model's own attributes (``CLIP``) or its
  ``text`` (``CustomTextCLIP``). A Hugging Face text tower (``HFTextEncoder``) is the group ``text`` alone;
* the model-level pieces ``logit_scale`` and ``logit_bias``, and CoCa's ``text_decoder``, groups of their own.

The presets ``open_clip.lock_image_tower_N`` and ``open_clip.lock_text_tower_N`` (:mod:`freezable.presets.open_clip`)
freeze what open_clip's own ``lock_image_tower(unlocked_groups=N)`` and ``lock_text_tower(unlocked_layers=N)``
freeze. open_clip is never imported here: its classes are read from ``sys.modules``.
"""

from __future__ import annotations

from torch import nn

from ..groups import is_within
from ._parts import (Groups, Parts, assemble, compact, has_params, holds_params, instance_of, param_names,
                     part_groups)
from .timm import timm_groups

__all__ = ["open_clip_groups", "is_open_clip", "open_clip_class", "text_tower"]

_STAGES = 4


def open_clip_class(module: object, path: str, name: str) -> bool:
    """Whether ``module`` is an instance of open_clip's class ``open_clip.<path>.<name>`` (without importing it)."""
    return instance_of(module, f"open_clip.{path}", name)


def is_open_clip(model: object) -> bool:
    """Whether ``model`` is an open_clip two-tower model (``CLIP``, ``CustomTextCLIP``, ``CoCa``)."""
    return (open_clip_class(model, "model", "CLIP") or open_clip_class(model, "model", "CustomTextCLIP")
            or open_clip_class(model, "coca_model", "CoCa"))


def open_clip_groups(model: nn.Module) -> Groups | None:
    """The groups of an open_clip model's towers, named after them, or ``None`` when ``model`` is none.

    Example:
        >>> import open_clip, torch
        >>> model = open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
        >>> groups = open_clip_groups(model)
        >>> [g for g in groups if "stage" not in g and "block" not in g]  # doctest: +NORMALIZE_WHITESPACE
        ['visual.stem', 'visual.head', 'visual.backbone', 'visual', 'text.stem', 'text.head', 'text.backbone',
         'text', 'logit_scale']
        >>> groups["visual.block12"], groups["text.stem"]
        (('visual.transformer.resblocks.11', 'visual.ln_post'), ('token_embedding', 'positional_embedding'))
    """
    if not is_open_clip(model):
        return None
    groups: Groups = {}
    for name, child in model.named_children():
        if name == "visual":
            tower = _image_tower(child)
            groups.update(part_groups("visual", tower, "visual") if tower else {"visual": ("visual",)})
        elif name == "text":
            tower = _text_groups(child, "")
            groups.update(part_groups("text", tower, "text") if tower else {"text": ("text",)})
    if not hasattr(model, "text") and isinstance(getattr(model, "transformer", None), nn.Module):
        text = part_groups("", _text_groups(model, ""), "text")  # CLIP keeps its text tower unpacked
        for umbrella in ("text", "text.backbone"):  # as the top-most modules: transformer, not its resblocks
            text[umbrella] = compact(model, param_names(model, text[umbrella]))
        groups.update(text)
    for name, child in model.named_children():
        if name not in ("visual", "text") and not is_within(name, [m for ms in groups.values() for m in ms]):
            if has_params(child) and name == "text_decoder":
                groups[name] = (name,)
    for name, _ in model.named_parameters(recurse=False):
        if not is_within(name, [m for ms in groups.values() for m in ms]):
            groups[name] = (name,)
    return {g: members for g, members in groups.items() if holds_params(model, members)}


# -- the image tower ---------------------------------------------------------------------------------


def _image_tower(visual: nn.Module) -> Groups:
    if open_clip_class(visual, "transformer", "VisionTransformer"):
        return _vit(visual)
    if open_clip_class(visual, "modified_resnet", "ModifiedResNet"):
        parts = Parts(stem=[n for n in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3",
                                        "avgpool")],
                      stages=[[f"layer{i}"] for i in range(1, 5)], head=["attnpool"])
        return assemble(visual, parts)
    if open_clip_class(visual, "timm_model", "TimmModel"):
        return _timm_tower(visual)
    return {}


def _vit(visual: nn.Module) -> Groups:
    """open_clip's ViT as its ``lock()`` groups it: stem, the resblocks (the last with ``ln_post`` and what else
    follows them), the projection ``proj`` as the head."""
    stem = [n for n in ("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre")
            if _exists(visual, n)]
    blocks = [[f"transformer.resblocks.{i}"] for i in range(len(visual.transformer.resblocks))]
    head = ["proj"] if _exists(visual, "proj") else []
    rest = [n for n, _ in visual.named_parameters() if not is_within(n, stem + head + [b[0] for b in blocks])]
    blocks[-1] += _top(visual, rest)
    return _tower(stem, blocks, head)


def _timm_tower(visual: nn.Module) -> Groups:
    """A timm trunk's own groups (as timm gives them to the trunk alone) and open_clip's projection ``head``."""
    trunk = timm_groups(visual.trunk) or {}
    groups: Groups = {g: tuple(f"trunk.{m}" for m in members) for g, members in trunk.items()
                      if g not in ("head", "backbone")}
    head = [f"trunk.{m}" for m in trunk.get("head", ())] + (["head"] if has_params(visual.head) else [])
    if head:
        groups["head"] = tuple(head)
        backbone = tuple(f"trunk.{m}" for m in trunk.get("backbone", ("",)))
        groups["backbone"] = backbone if "head" in trunk else ("trunk",)
    return groups


# -- the text tower ----------------------------------------------------------------------------------


def text_tower(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module that holds the text tower's attributes and its name (``CLIP``: the model itself, ``""``;
    ``CustomTextCLIP``: ``text``), when it is open_clip's own transformer text tower."""
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module):
        return (text, "text") if open_clip_class(text, "transformer", "TextTransformer") else None
    return (model, "") if isinstance(getattr(model, "transformer", None), nn.Module) else None


def _text_groups(text: nn.Module, prefix: str) -> Groups:
    """The text tower as ``lock_text_tower`` groups it: embeddings, a resblock each (the last with ``ln_final``),
    ``text_projection``; names prefixed with ``prefix``."""
    if not open_clip_class(text, "transformer", "TextTransformer") and not is_open_clip(text):
        return {}
    resblocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    if not isinstance(resblocks, nn.ModuleList) or not len(resblocks):
        return {}
    stem = [n for n in ("token_embedding", "positional_embedding", "cls_emb") if _exists(text, n)]
    blocks = [[f"transformer.resblocks.{i}"] for i in range(len(resblocks))]
    blocks[-1] += [n for n in ("ln_final",) if _exists(text, n)]
    head = ["text_projection"] if _exists(text, "text_projection") else []
    groups = _tower(stem, blocks, head)
    return {g: tuple(prefix + m for m in members) for g, members in groups.items()}


# -- shared --------------------------------------------------------------------------------------------


def _tower(stem: list[str], blocks: list[list[str]], head: list[str]) -> Groups:
    """``stem``, four even stages of the blocks, the blocks, ``head``, and ``backbone`` (all but the head)."""
    groups: Groups = {"stem": tuple(stem)} if stem else {}
    n = len(blocks)
    stages = min(_STAGES, n)
    for s in range(stages):
        groups[f"stage{s + 1}"] = tuple(m for block in blocks[s * n // stages:(s + 1) * n // stages] for m in block)
    groups.update((f"block{i + 1}", tuple(block)) for i, block in enumerate(blocks))
    if head:
        groups["head"] = tuple(head)
        groups["backbone"] = tuple(stem) + tuple(m for block in blocks for m in block)
    return groups


def _exists(module: nn.Module, name: str) -> bool:
    """Whether ``module`` has a submodule or parameter ``name`` (a module without parameters counts)."""
    value = getattr(module, name, None)
    return isinstance(value, (nn.Module, nn.Parameter))


def _top(module: nn.Module, params: list[str]) -> list[str]:
    """The children of ``module`` whose parameters all lie in ``params``, then the parameters none of them holds."""
    wanted = set(params)
    children = [n for n, c in module.named_children()
                if has_params(c) and all(f"{n}.{p}" in wanted for p, _ in c.named_parameters())]
    return children + [p for p in params if not is_within(p, children)]

