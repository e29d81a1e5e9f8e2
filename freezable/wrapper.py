"""The :class:`FrozenBackbone` wrapper: any backbone, frozen, with its own checkpoint keys."""

from __future__ import annotations

import functools
import inspect
import re

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import _state
from ._inference import run_without_autograd, tensors_in
from .errors import FreezableError, type_error
from .fast import FastOptions, FastPath, build_fast_path
from .mixin import Freezable
from .plan import carry_out, make_plan
from .presets import Preset
from .stages import outline
from .summary import count_elements, format_count

__all__ = ["FrozenBackbone"]

_PREFIX = "backbone."


def _strip_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: the backbone's keys without ``backbone.``, in their order."""
    inner = prefix + _PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            metadata[prefix + key[len(inner):] if key != inner[:-1] else prefix[:-1]] = metadata.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: the backbone's own keys are read into ``backbone.``."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + _PREFIX + key[len(prefix):]] = state_dict.pop(key)


def _drop_fast_path(module: FrozenBackbone, incompatible_keys: Any) -> None:
    """Load post-hook: the fast path is rebuilt from the loaded weights at the next forward."""
    module._drop_fast_path()


def _prefixed_pattern(pattern: str) -> str:
    r"""A regex tried with ``re.match`` on the backbone's names, for the wrapper's names (``backbone.`` before them).

    Each top-level alternative of timm's patterns starts at the name's start (``re.match``); the ``^``
    anchors go, and the whole pattern goes in a group behind the prefix.

    Example:
        >>> _prefixed_pattern(r"^cls_token|^pos_embed|patch_embed")
        '^backbone\\.(?:cls_token|pos_embed|patch_embed)'
        >>> bool(re.match(_prefixed_pattern(r"^blocks\.(\d+)"), "backbone.blocks.3.mlp"))
        True
    """
    alternatives, depth, start, i = [], 0, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "[":  # a character class: up to its closing bracket
            i = pattern.index("]", i + 2 if pattern[i + 1:i + 2] in ("]", "^") else i + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            alternatives.append(pattern[start:i])
            start = i + 1
        i += 1
    alternatives.append(pattern[start:])
    return "^" + re.escape(_PREFIX) + "(?:" + "|".join(a[1:] if a.startswith("^") else a for a in alternatives) + ")"


def _prefixed_matcher(matcher: Any) -> Any:
    """timm's ``group_matcher`` value (``{group: pattern or [(pattern, ordinal), ...]}``) for the wrapper's names."""
    if not isinstance(matcher, dict):
        raise FreezableError(
            f"the backbone's group_matcher returned {type(matcher).__name__}, not timm's dict of patterns; call "
            f"fb.backbone.group_matcher() and match fb.backbone.named_parameters() instead"
        )

    def prefixed(spec: Any) -> Any:
        if isinstance(spec, str):
            return _prefixed_pattern(spec)
        if isinstance(spec, (list, tuple)):
            return [(_prefixed_pattern(p), *rest) if isinstance(p, str) else (p, *rest) for p, *rest in spec]
        return spec

    return {group: prefixed(spec) for group, spec in matcher.items()}


def _prefixed_names(names: Any) -> set[str]:
    """timm's ``no_weight_decay()`` names (or fnmatch patterns) for the wrapper's names."""
    return {_PREFIX + name for name in names}


# Methods that fall through to the backbone and answer in parameter names: what makes the answer the wrapper's.
# timm's optimizer factory (create_optimizer_v2, param_groups_layer_decay) reads them against named_parameters().
_IN_WRAPPER_NAMES: dict[str, Any] = {
    "group_matcher": _prefixed_matcher,
    "no_weight_decay": _prefixed_names,
}


class _Forward(functools.partial):
    """``fb.forward`` as an instance attribute: the wrapper's forward, showing the backbone's signature (what
    the Hugging Face ``Trainer`` reads to keep a dataset's columns)."""

    @property
    def __signature__(self) -> inspect.Signature:
        try:
            return inspect.signature(self.args[0].backbone.forward)
        except (TypeError, ValueError):
            return inspect.signature(functools.partial(self.func, self.args[0]))


class FrozenBackbone(Freezable, nn.Module):
    """A frozen backbone: parameters fixed, norm layers and dropout at inference.

    Groups come from ``preset`` when given, else from the groups detected for
    known torchvision and timm models (``stem``, ``stage1`` ..., ``head``,
    ``backbone``). Attributes it lacks fall through to the backbone
    (``fb.num_features``, ``fb.forward_features``); those that answer in parameter names (timm's
    ``group_matcher()`` and ``no_weight_decay()``) answer in the wrapper's (``backbone.`` before them),
    so timm's ``create_optimizer_v2(fb, layer_decay=...)`` groups as on the plain model. ``state_dict()``
    has exactly the backbone's own keys, and ``load_state_dict`` takes the backbone's checkpoints.
    A fully frozen backbone whose input needs no gradient records no autograd graph: it runs
    under ``torch.inference_mode()`` and returns a clone of its output (a normal tensor).

    Args:
        backbone: the model to wrap.
        trainable: group names or specs that stay trainable.
        preset: a preset name (or :class:`Preset`): its ``frozen`` groups are
            frozen, less ``trainable``. Without it everything but ``trainable`` is frozen.
        fast: run the frozen parts through an inference-optimised shadow (see
            :mod:`freezable.fast`): BatchNorm folded into the convolution before it,
            channels-last weights and inputs (CPU and CUDA). Results match the plain path up to
            float rounding; ``state_dict()`` and ``parameters()`` are unchanged (the shadow is not
            registered). Trainable parts are shared with the shadow, so a partially
            frozen backbone gets the optimised copies for its held parts and trains the rest.
        frozen_dtype: with ``fast``, store the frozen copies' floating tensors in this dtype
            (``torch.bfloat16``: half their memory); their inputs are cast to it and their
            outputs cast back to the input's dtype. The original fp32 weights are kept for
            ``state_dict()`` and ``unfreeze``.
        norm_eval: hold the body's norm layers with running statistics (the stem and stages, or the whole
            backbone without them) in eval whatever ``train()`` calls follow, their affine parameters still
            trainable where not frozen: mmdetection's ``norm_eval=True`` (see :meth:`set_norm_eval`). ``None``
            takes the preset's setting (off without a preset); ``True``/``False`` override it.

    Raises:
        FreezableTypeError: ``backbone`` is not an ``nn.Module``.
        PresetError: unknown preset, or one that does not fit.
        SpecError: a ``trainable`` entry is neither a group nor a spec that matches.
        FreezableError: ``frozen_dtype`` without ``fast``, or not a floating dtype.
        FreezableTypeError: ``norm_eval`` is not a bool or ``None``.

    Example:
        >>> import torch, torchvision
        >>> fb = FrozenBackbone(torchvision.models.resnet18(num_classes=10), trainable=["fc"])
        >>> fb.frozen_groups[:6]
        ('stem', 'stage1', 'stage2', 'stage3', 'stage4', 'block1')
        >>> fb.train().backbone.bn1.training, fb(torch.randn(2, 3, 32, 32)).shape
        (False, torch.Size([2, 10]))
        >>> import timm
        >>> vit = FrozenBackbone(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0))
        >>> import re
        >>> bool(re.match(vit.group_matcher()["stem"], "backbone.pos_embed")), sorted(vit.no_weight_decay())[:2]
        (True, ['backbone.cls_token', 'backbone.dist_token'])
    """

    def __init__(
        self,
        backbone: nn.Module,
        trainable: Sequence[Any] = (),
        preset: str | Preset | None = None,
        *,
        fast: bool = False,
        frozen_dtype: torch.dtype | None = None,
        norm_eval: bool | None = None,
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise type_error("FrozenBackbone's backbone", backbone, "an nn.Module instance")
        fast_options = FastOptions(fast, frozen_dtype)
        plan = make_plan(backbone, trainable, preset, norm_eval)
        super().__init__()
        self.__dict__["_fast_options"] = fast_options
        self.__dict__["_fast_path"] = None  # the shadow last built (fast=True), or None until the next forward
        self.backbone = backbone
        _state.set_freeze_root(self, "backbone")
        self.__dict__["forward"] = _Forward(type(self).forward, self)
        self._register_state_dict_hook(_strip_prefix)
        self._register_load_state_dict_pre_hook(_add_prefix, with_module=True)
        self.register_load_state_dict_post_hook(_drop_fast_path)
        carry_out(self, plan, "FrozenBackbone(...)")

    @property
    def fast(self) -> bool:
        """Whether the frozen parts run through the inference-optimised shadow."""
        return self._fast_options.enabled

    @property
    def frozen_dtype(self) -> torch.dtype | None:
        """The dtype the fast path stores frozen copies in (``None``: the backbone's own)."""
        return self._fast_options.frozen_dtype

    def _drop_fast_path(self) -> None:
        self.__dict__["_fast_path"] = None

    def _on_freeze_change(self) -> None:
        super()._on_freeze_change()
        self._drop_fast_path()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> FrozenBackbone:
        self._drop_fast_path()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fast_path"] = None
        state.pop("forward", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__["forward"] = _Forward(type(self).forward, self)

    @torch.compiler.disable
    def _build_fast_path(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FastPath:
        path = build_fast_path(self.backbone, args, kwargs, dtype=self._fast_options.frozen_dtype)
        self.__dict__["_fast_path"] = path
        return path

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the backbone; without autograd when nothing in it or its input needs a gradient."""
        if not self._fast_options.enabled:
            return self._run(self.backbone, args, kwargs)
        path = self._fast_path
        if path is None or not path.serves(self._modules["backbone"]):
            path = self._build_fast_path(args, kwargs)
        path.sync_modes()
        return self._run(path.module, args, kwargs)

    def _run(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """With autograd when something needs a gradient; else without (:mod:`freezable._inference`)."""
        if torch.is_grad_enabled() and not self._records_no_graph(args, kwargs):
            return module(*args, **kwargs)
        return run_without_autograd(module, args, kwargs)

    def _records_no_graph(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return (not any(p.requires_grad for p in self.backbone.parameters())
                and not any(t.requires_grad for t in tensors_in((args, kwargs))))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "backbone" not in self.__dict__.get("_modules", {}):
                raise
            value = getattr(self._modules["backbone"], name)
            if name in _IN_WRAPPER_NAMES and callable(value):
                return functools.wraps(value)(lambda *args, **kwargs: _IN_WRAPPER_NAMES[name](value(*args, **kwargs)))
            return value

    def __repr__(self) -> str:
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture") if isinstance(cfg, dict) else None
        total = count_elements(self.backbone.parameters())
        trainable = count_elements(self.trainable_parameters())
        frozen = outline(self.backbone, self.freeze_group_map, self.frozen_groups)
        return (
            f"FrozenBackbone({arch or type(self.backbone).__name__}, frozen={frozen}, "
            f"trainable={format_count(trainable)}/{format_count(total)}{', fast=True' if self.fast else ''})"
        )
