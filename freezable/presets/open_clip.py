"""open_clip's ``lock_image_tower(unlocked_groups=N)`` and ``lock_text_tower(unlocked_layers=N)``, as groups.

open_clip (LiT and its training script's ``--lock-image-unlocked-groups``, ``--lock-text-unlocked-layers``)
freezes a tower and then unlocks its last ``N`` groups, in its own order:

* image tower, open_clip's ``VisionTransformer``: ``[conv1, class_embedding, positional_embedding, ln_pre]``,
  each resblock but the last, ``[last resblock, ln_post]``, ``[proj]`` (an attentional pooler stays locked);
  a timm tower: the trunk alone, by timm's ``group_matcher`` layer ids (open_clip's projection head is never
  locked); ``ModifiedResNet``: the whole tower, ``N = 0`` only;
* text tower: ``[token_embedding, positional_embedding, cls_emb]``, each resblock but the last,
  ``[last resblock, ln_final]``, ``[text_projection]``.

The presets ``open_clip.lock_image_tower_N`` and ``open_clip.lock_text_tower_N`` freeze exactly those
parameters, as the group ``locked_image_tower`` / ``locked_text_tower``; the detected groups come along.
Unlike ``lock_image_tower(freeze_bn_stats=False)``, the frozen part's BatchNorm is held in eval (freezing).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..detect import detect_groups
from ..detect._parts import Groups, compact
from ..detect.open_clip import is_open_clip, open_clip_class, text_tower
from ..errors import PresetError
from ..groups import is_within

__all__ = ["lock_image_tower", "lock_text_tower", "LOCKED_IMAGE", "LOCKED_TEXT"]

LOCKED_IMAGE = "locked_image_tower"
LOCKED_TEXT = "locked_text_tower"


def lock_image_tower(n: int) -> Callable[[nn.Module], Groups]:
    """The groups function of the preset for open_clip's ``lock_image_tower(unlocked_groups=n)``.

    Example:
        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
        >>> locked = lock_image_tower(2)(model)[LOCKED_IMAGE]  # the last resblock, ln_post and proj stay trainable
        >>> [name in locked for name in ("visual.transformer.resblocks.10", "visual.transformer.resblocks.11",
        ...                              "visual.ln_post", "visual.proj")]
        [True, False, False, False]
    """

    def groups(model: nn.Module) -> Groups:
        visual = _model(model, f"lock_image_tower_{n}").visual
        if open_clip_class(visual, "transformer", "VisionTransformer"):
            resblocks = [f"transformer.resblocks.{i}" for i in range(len(visual.transformer.resblocks))]
            unlocked = [["conv1", "class_embedding", "positional_embedding", "ln_pre"], *[[b] for b in resblocks[:-1]],
                        [resblocks[-1], "ln_post"], ["proj"]][max(0, len(resblocks) + 2 - n):] if n else []
            locked = [p for p, _ in visual.named_parameters() if not is_within(p, [m for g in unlocked for m in g])]
        elif open_clip_class(visual, "timm_model", "TimmModel"):
            locked = [f"trunk.{p}" for p in _timm_locked(visual.trunk, n)]
        elif open_clip_class(visual, "modified_resnet", "ModifiedResNet") and n == 0:
            locked = [p for p, _ in visual.named_parameters()]
        else:
            raise PresetError(f"lock_image_tower_{n}: open_clip locks a {type(visual).__name__} image tower "
                              f"{'with unlocked_groups=0 only' if n else 'in no way this preset knows'}")
        return {**detect_groups(model), LOCKED_IMAGE: tuple(f"visual.{m}" for m in compact(visual, locked))}

    return groups


def lock_text_tower(n: int) -> Callable[[nn.Module], Groups]:
    """The groups function of the preset for open_clip's ``lock_text_tower(unlocked_layers=n)``.

    Example:
        >>> import open_clip
        >>> model = open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
        >>> lock_text_tower(1)(model)[LOCKED_TEXT][:3]  # text_projection stays trainable
        ('transformer', 'token_embedding', 'ln_final')
    """

    def groups(model: nn.Module) -> Groups:
        found = text_tower(_model(model, f"lock_text_tower_{n}"))
        if found is None:
            raise PresetError(f"lock_text_tower_{n} knows open_clip's own transformer text tower; "
                              f"{type(model).__name__}'s text tower is a {type(getattr(model, 'text', None)).__name__}")
        text, prefix = found
        present = [a for a in ("token_embedding", "positional_embedding", "cls_emb", "transformer", "ln_final",
                               "text_projection") if isinstance(getattr(text, a, None), (nn.Module, nn.Parameter))]
        resblocks = getattr(text.transformer, "resblocks", None) or []
        order = [[a for a in ("token_embedding", "positional_embedding", "cls_emb") if a in present]]
        order = [g for g in order if g] + [[f"transformer.resblocks.{i}"] for i in range(len(resblocks) - 1)]
        order += [[f"transformer.resblocks.{len(resblocks) - 1}"] + [a for a in ("ln_final",) if a in present]]
        order += [["text_projection"]] if "text_projection" in present else []
        unlocked = [m for g in order[len(order) - min(n, len(order)):] for m in g] if n and len(resblocks) else []
        locked = [p for p, _ in text.named_parameters() if is_within(p, present) and not is_within(p, unlocked)]
        names = compact(text, locked)
        return {**detect_groups(model), LOCKED_TEXT: tuple(f"{prefix}.{m}" if prefix else m for m in names)}

    return groups


def _model(model: nn.Module, preset: str) -> nn.Module:
    if not is_open_clip(model):
        raise PresetError(f"{preset} fits open_clip models (CLIP, CustomTextCLIP, CoCa), not {type(model).__name__}")
    return model


def _timm_locked(trunk: nn.Module, n: int) -> list[str]:
    """What open_clip's ``TimmModel.lock`` freezes: the whole trunk, or its timm layer ids up to the last but ``n``."""
    if not n:
        return [p for p, _ in trunk.named_parameters()]
    from timm.models import group_parameters

    layer_of = group_parameters(trunk, trunk.group_matcher(), reverse=True)
    last = max(layer_of.values()) - n
    return [p for p, _ in trunk.named_parameters() if layer_of[p] <= last]
