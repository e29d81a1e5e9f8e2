"""Building the fast path's shadow: the held parts copied for inference, BatchNorm folded, stored as asked.

See :mod:`freezable.fast` for what the shadow is. :func:`build_fast_path` traces one forward
(:mod:`freezable.fast.trace`), copies each held part sharing its tensors, folds the conv-BatchNorm
pairs the trace found (:mod:`freezable.fast.fold`) and keeps a folded copy only if it matches the
original on that batch, converts the copies' tensors to the storage dtype and memory format, and
puts the copies in place of the originals in a shallow twin of the backbone.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from .._inference import map_tensors
from .._state import set_frozen, set_held
from .fold import can_fold, fold_conv_bn, norm_remainder
from .path import FastPath, held_roots
from .trace import conv_bn_pairs, trace_forward

__all__ = ["build_fast_path"]

_VALIDATE_RTOL = 1e-2  # a wrong fold is off by O(1); a right one by float rounding (~1e-6, TF32: ~1e-3)
# devices where channels-last convolutions measured faster (CPU: oneDNN; CUDA: tensor cores)
_CHANNELS_LAST_DEVICES = ("cpu", "cuda")


class _Prepared(nn.Module):
    """Casts a held copy's inputs to its storage dtype and memory format, and its outputs back."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None, channels_last: bool) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.channels_last = channels_last

    def _prepare(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if self.dtype is not None:
                value = value.to(self.dtype)
            if self.channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        return value

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        out = self.module(*[self._prepare(a) for a in args], **{k: self._prepare(v) for k, v in kwargs.items()})
        if self.dtype is None or not floats:
            return out
        return map_tensors(out, lambda t: t.to(floats[0].dtype) if t.is_floating_point() else t)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)


def _relative(name: str, root_name: str) -> str:
    return name[len(root_name) + 1:] if root_name else name


def _copy_held(root: nn.Module) -> nn.Module:
    """A copy of a held module in eval mode, sharing every parameter and buffer, without hold marks."""
    memo: dict[int, Any] = {id(t): t for t in root.parameters()}
    memo.update({id(t): t for t in root.buffers()})
    clone = copy.deepcopy(root, memo)
    for m in clone.modules():
        set_frozen(m, False)
        set_held(m, False, False)
    return clone


def _fold(
    clone: nn.Module, pairs: list[tuple[str, str]], root_name: str, sources: list[torch.Tensor]
) -> list[tuple[str, str]]:
    done = []
    for conv_name, bn_name in pairs:
        conv_rel, bn_rel = _relative(conv_name, root_name), _relative(bn_name, root_name)
        if not conv_rel or not bn_rel:
            continue
        conv, bn = clone.get_submodule(conv_rel), clone.get_submodule(bn_rel)
        if not can_fold(conv, bn):
            continue
        sources.extend(t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
                       if t is not None)
        _set_submodule(clone, conv_rel, fold_conv_bn(conv, bn))
        _set_submodule(clone, bn_rel, norm_remainder(bn))
        done.append((conv_name, bn_name))
    return done


def _close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            return False
        if not expected.is_floating_point():
            return torch.equal(actual, expected)
        scale = expected.abs().max().item() if expected.numel() else 0.0
        return bool((actual.float() - expected.float()).abs().max().item() <= _VALIDATE_RTOL * scale + 1e-6) \
            if expected.numel() else True
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
            _close(a, e) for a, e in zip(actual, expected))
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            _close(actual[k], expected[k]) for k in expected)
    return True


def _convert(clone: nn.Module, dtype: torch.dtype | None, channels_last: bool, sources: list[torch.Tensor],
             originals: set[int]) -> None:
    """Stores the copy's tensors in ``dtype`` / channels-last, as new tensors (originals stay untouched).

    Converted originals join ``sources``; converted tensors that folding made are simply dropped.
    """
    for m in clone.modules():
        for store, wrap in ((m._parameters, lambda t: nn.Parameter(t, requires_grad=False)), (m._buffers, lambda t: t)):
            for name, t in store.items():
                if t is None or not t.is_floating_point():
                    continue
                new = t.to(dtype) if dtype is not None else t
                if channels_last and new.dim() == 4:
                    new = new.contiguous(memory_format=torch.channels_last)
                if new is not t:
                    if id(t) in originals:
                        sources.append(t)
                    store[name] = wrap(new.detach())


def build_fast_path(
    backbone: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
) -> FastPath:
    """Builds the shadow of ``backbone`` for inputs like ``args``/``kwargs``; the backbone itself when nothing is held.

    Runs ``backbone`` once (eval mode, no autograd, modes restored) to find conv-BatchNorm pairs and
    to check each folded copy against the original on that batch.

    Args:
        backbone: the module whose held parts are copied.
        args: positional inputs of one forward, as the shadow will get them.
        kwargs: keyword inputs of that forward.
        dtype: store the copies' floating tensors in this dtype (``None``: their own).
        channels_last: store the copies' 4-d weights and inputs channels-last; ``None``: on the devices where
            that measured faster (CPU and CUDA).
    """
    roots = dict(held_roots(backbone))
    if not roots:
        return FastPath(backbone, backbone)
    device = next((t.device for t in backbone.parameters()), torch.device("cpu"))
    if channels_last is None:
        channels_last = device.type in _CHANNELS_LAST_DEVICES
    with torch.autocast(device.type, enabled=False):  # compare folded and unfolded in full precision
        return _build(backbone, roots, args, kwargs, dtype, channels_last)


def _build(backbone: nn.Module, roots: dict[str, nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any],
           dtype: torch.dtype | None, channels_last: bool) -> FastPath:
    trace = trace_forward(backbone, roots, args, kwargs)
    sources: list[torch.Tensor] = []
    folded: list[tuple[str, str]] = []
    copies: dict[int, nn.Module] = {}
    for root_name, root in roots.items():
        clone = _copy_held(root)
        root_sources: list[torch.Tensor] = []
        pairs = _fold(clone, conv_bn_pairs(trace, root_name), root_name, root_sources)
        if pairs and root_name in trace.io:
            inputs, kw, expected = trace.io[root_name]
            with torch.no_grad():
                actual = clone(*inputs, **kw)
            if not _close(actual, expected):
                warnings.warn(f"freezable fast path: folding BatchNorm in {root_name or 'the backbone'!r} changed "
                              "its output; running it unfolded", RuntimeWarning, stacklevel=3)
                clone, pairs, root_sources = _copy_held(root), [], []
        originals = {id(t) for t in root.parameters()} | {id(t) for t in root.buffers()}
        _convert(clone, dtype, channels_last, root_sources, originals)
        sources.extend(root_sources)
        folded.extend(pairs)
        prepared = dtype is not None or channels_last
        copies[id(root)] = _Prepared(clone, dtype, channels_last).eval() if prepared else clone
    mixed: list[tuple[nn.Module, nn.Module]] = []

    def shadow(module: nn.Module) -> nn.Module:
        if id(module) in copies:
            return copies[id(module)]
        if not any(id(m) in copies for m in module.modules()):
            return module
        twin = copy.copy(module)
        twin._modules = {k: None if v is None else shadow(v) for k, v in module._modules.items()}
        mixed.append((twin, module))
        return twin

    unique = {id(t): t for t in sources}.values()
    return FastPath(shadow(backbone), backbone, list(roots.items()), [(t, t._version) for t in unique], mixed,
                    folded, _slots(backbone, roots))


def _slots(backbone: nn.Module, roots: dict[str, nn.Module]) -> list[tuple[dict[str, Any], str, Any]]:
    """What the shadow holds by reference: each submodule in its parent, each held tensor in its module."""
    slots = [(parent._modules, name, child) for parent in backbone.modules() for name, child in parent._modules.items()]
    for root in roots.values():
        for module in root.modules():
            slots += [(module._parameters, name, t) for name, t in module._parameters.items()]
            slots += [(module._buffers, name, t) for name, t in module._buffers.items()]
    return slots
