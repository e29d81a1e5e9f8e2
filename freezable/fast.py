"""The frozen fast path of ``FrozenBackbone(fast=True)``: an inference-optimised shadow of the backbone.

The shadow is built lazily, at the first forward that needs it, and is never registered on the
wrapper: ``state_dict()``, ``parameters()`` and ``.to()`` see the original backbone only. In it:

* every *held* submodule (frozen, with no trainable parameter below it) is replaced by a copy in
  eval mode with each BatchNorm folded into the convolution whose output it reads (timm's
  ``BatchNormAct2d`` keeps its dropout and activation); convolution-BatchNorm pairs are found by
  tracing one forward (autocast off), and a copy whose folded output does not match the original
  within 1e-2 relative on that batch is used unfolded;
* with ``channels_last`` the copies' 4-d weights and inputs use the channels-last memory format;
* with ``frozen_dtype`` the copies store their floating tensors in that dtype; their floating inputs are
  cast to it and their outputs cast back to the input's dtype;
* the rest (trainable parts and modules above the held ones) is the original modules, shared, so
  an optimizer still trains them and their modes follow ``train()``.

Tensors are shared with the original wherever the copy does not change them, so a frozen backbone
without BatchNorm (a ViT) costs no extra memory in fp32. The shadow is dropped, to be rebuilt at the
next forward, on ``freeze``/``unfreeze``, ``load_state_dict``, ``.to()``/``.cuda()``/``.half()``,
and (outside ``torch.compile``) whenever other parts are held (any Freezable, around the wrapper or
inside it, changed a hold), an original tensor that a copy was derived from changed
in place, or an object the shadow was built from was replaced: a parameter or buffer of a held part
(``load_state_dict(assign=True)`` on the backbone, ``conv.weight = nn.Parameter(...)``) or any
submodule of the backbone. That check is one identity comparison per submodule and held tensor, and
one version comparison per derived tensor, at every forward (a ResNet-50: see
``benchmarks/fast_path_staleness.py``).
"""

from __future__ import annotations

import copy
import operator
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from .fold import can_fold, fold_conv_bn, norm_remainder
from ._state import hold_changes, is_held, set_frozen, set_held

__all__ = ["FastPath", "build_fast_path"]

_VERSION = operator.attrgetter("_version")
_VALIDATE_RTOL = 1e-2  # a wrong fold is off by O(1); a right one by float rounding (~1e-6, TF32: ~1e-3)


@dataclass
class FastPath:
    """The shadow module and what tells when it is stale."""

    # the backbone with its held parts replaced by inference-optimised copies
    module: nn.Module
    # original tensors the copies were derived from, with their version counters at build time
    sources: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    # (shallow copy, original) for modules above held parts, whose mode must follow the original's
    mixed: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    # conv-BatchNorm pairs folded, as names in the backbone
    folded: list[tuple[str, str]] = field(default_factory=list)
    # (dict, key, object) the shadow was built from: every submodule of the backbone in its parent's
    # _modules, every parameter and buffer of a held part in its module's _parameters or _buffers
    slots: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    # the backbone it was built from (a wrapper whose backbone was replaced needs another)
    origin: nn.Module | None = None
    # the held parts it replaced with copies, by name: none for a shadow that is the backbone itself
    roots: list[tuple[str, nn.Module]] = field(default_factory=list)
    # the count of hold changes at the build (see freezable._state.hold_changes)
    holds_seen: int = field(default_factory=hold_changes)

    def __post_init__(self) -> None:
        # the columns of slots and sources, for is_stale's C-level loops (map, not a Python generator)
        self._stores, self._keys, self._objects = (tuple(c) for c in zip(*self.slots)) if self.slots else ((),) * 3
        self._tensors, self._versions = (tuple(c) for c in zip(*self.sources)) if self.sources else ((), ())

    def is_stale(self) -> bool:
        """Whether the held parts changed, an object the shadow was built from was replaced, or a tensor a copy
        was derived from changed in place, since the build."""
        return (self._holds_moved()
                or any(map(operator.is_not, map(dict.get, self._stores, self._keys), self._objects))
                or any(map(operator.ne, map(_VERSION, self._tensors), self._versions)))

    def _holds_moved(self) -> bool:
        """Whether other parts are held now: any Freezable (this wrapper, one around it, one inside) may have
        changed a hold since the build. One integer comparison while no hold changed anywhere."""
        now = hold_changes()
        if now == self.holds_seen:
            return False
        if self.origin is None or [(n, id(m)) for n, m in _held_roots(self.origin)] != [
                (n, id(m)) for n, m in self.roots]:
            return True
        self.holds_seen = now
        return False

    def sync_modes(self) -> None:
        """Gives the shallow copies of modules above held parts their originals' training mode."""
        for shadow, original in self.mixed:
            shadow.training = original.training


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
        return _map_tensors(out, lambda t: t.to(floats[0].dtype) if t.is_floating_point() else t)


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it, each container rebuilt as its own exact type.

    Containers are those :mod:`torch.utils._pytree` knows (tuples, named tuples, lists, dicts, ordered and
    default dicts, deques, Hugging Face ``ModelOutput`` classes, whatever a library registered), and, inside
    or around them, dataclass instances and dict subclasses it does not know (copied, their fields and items
    mapped). Anything else is passed through as it is.
    """
    return pytree.tree_map(lambda leaf: _map_leaf(leaf, fn), value)


def _map_leaf(leaf: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(leaf, torch.Tensor):
        return fn(leaf)
    if isinstance(leaf, dict):  # a dict subclass pytree does not know: its own __setitem__ keeps it consistent
        new = copy.copy(leaf)
        for key, item in leaf.items():
            new[key] = _map_tensors(item, fn)
        return new
    if is_dataclass(leaf) and not isinstance(leaf, type):
        new = copy.copy(leaf)
        for f in fields(leaf):
            if hasattr(leaf, f.name):
                object.__setattr__(new, f.name, _map_tensors(getattr(leaf, f.name), fn))  # frozen ones too
        return new
    return leaf


def clone_outputs(value: Any) -> Any:
    """Clones every tensor in ``value`` (inference tensors become normal ones outside inference mode).

    Every container keeps its exact type (see :func:`_map_tensors`).

    Example:
        >>> import collections
        >>> Out = collections.namedtuple("Out", "features logits")
        >>> with torch.inference_mode():
        ...     out = Out(torch.ones(2), {"p": [torch.zeros(1)]})
        >>> cloned = clone_outputs(out)
        >>> type(cloned).__name__, cloned.features.is_inference(), cloned.logits["p"][0].is_inference()
        ('Out', False, False)
    """
    return _map_tensors(value, torch.Tensor.clone)


def _held_roots(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    # a norm layer held by norm_eval whose affine parameters train stays the original, shared and trained;
    # a container without a forward (ModuleList, ModuleDict) is iterated by its parent, never called: its
    # children are the roots, so that it stays a container of the same type (shallow-copied, as mixed ones are)
    if (is_held(module) and not any(p.requires_grad for p in module.parameters())
            and type(module).forward is not nn.Module.forward):
        yield prefix, module
        return
    for name, child in module._modules.items():
        if child is not None:
            yield from _held_roots(child, f"{prefix}.{name}" if prefix else name)


@dataclass
class _Trace:
    """What one traced forward saw: conv outputs, BatchNorm inputs, held roots' first calls."""

    conv_out: dict[int, tuple[str, Any]] = field(default_factory=dict)  # id -> (name, weakref to output)
    bn_in: dict[str, str] = field(default_factory=dict)  # BatchNorm name -> name of the conv it read
    calls: dict[str, int] = field(default_factory=dict)
    io: dict[str, tuple[tuple[Any, ...], dict[str, Any], Any]] = field(default_factory=dict)


def _trace(backbone: nn.Module, roots: dict[str, nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Trace:
    """Runs ``backbone`` once in eval mode without autograd, recording what folding needs; restores modes."""
    trace = _Trace()
    handles = []

    def count(name: str) -> None:
        trace.calls[name] = trace.calls.get(name, 0) + 1

    def on_conv(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            count(name)
            if isinstance(output, torch.Tensor):  # a weak reference: activations are freed as usual
                trace.conv_out[id(output)] = (name, weakref.ref(output))
        return hook

    def on_bn(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            count(name)
            if inputs and isinstance(inputs[0], torch.Tensor):
                hit = trace.conv_out.get(id(inputs[0]))
                if hit is not None and hit[1]() is inputs[0]:  # the very tensor, not a reused address
                    trace.bn_in[name] = hit[0]
        return hook

    def on_root(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, kw: Any, output: Any) -> None:
            trace.io.setdefault(name, (inputs, kw, output))
        return hook

    for root_name, root in roots.items():
        handles.append(root.register_forward_hook(on_root(root_name), with_kwargs=True))
        for rel, m in root.named_modules(prefix=root_name):
            if isinstance(m, nn.modules.conv._ConvNd):
                handles.append(m.register_forward_hook(on_conv(rel)))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles.append(m.register_forward_pre_hook(on_bn(rel)))
    modes = {m: m.training for m in backbone.modules()}
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in handles:
            h.remove()
    return trace


def _pairs(trace: _Trace, root_name: str) -> list[tuple[str, str]]:
    """Conv-BatchNorm pairs inside one held root: the BatchNorm read the conv's output; each ran once."""
    pairs = []
    inside = (lambda n: n.startswith(root_name + ".")) if root_name else (lambda n: True)
    for bn_name, conv_name in trace.bn_in.items():
        if inside(bn_name) and inside(conv_name) and trace.calls[bn_name] == 1 and trace.calls[conv_name] == 1:
            pairs.append((conv_name, bn_name))
    return pairs


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
    channels_last: bool = False,
) -> FastPath | None:
    """Builds the shadow of ``backbone`` for inputs like ``args``/``kwargs``; ``None`` when nothing is held.

    Runs ``backbone`` once (eval mode, no autograd, modes restored) to find conv-BatchNorm pairs and
    to check each folded copy against the original on that batch.
    """
    roots = dict(_held_roots(backbone))
    if not roots:
        return None
    device = next((t.device for t in backbone.parameters()), torch.device("cpu"))
    with torch.autocast(device.type, enabled=False):  # compare folded and unfolded in full precision
        return _build(backbone, roots, args, kwargs, dtype, channels_last)


def _build(backbone: nn.Module, roots: dict[str, nn.Module], args: tuple[Any, ...], kwargs: dict[str, Any],
           dtype: torch.dtype | None, channels_last: bool) -> FastPath:
    trace = _trace(backbone, roots, args, kwargs)
    sources: list[torch.Tensor] = []
    folded: list[tuple[str, str]] = []
    copies: dict[int, nn.Module] = {}
    for root_name, root in roots.items():
        clone = _copy_held(root)
        root_sources: list[torch.Tensor] = []
        pairs = _fold(clone, _pairs(trace, root_name), root_name, root_sources)
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
    return FastPath(shadow(backbone), [(t, t._version) for t in unique], mixed, folded, _slots(backbone, roots),
                    backbone, list(roots.items()))


def _slots(backbone: nn.Module, roots: dict[str, nn.Module]) -> list[tuple[dict[str, Any], str, Any]]:
    """What the shadow holds by reference: each submodule in its parent, each held tensor in its module."""
    slots = [(parent._modules, name, child) for parent in backbone.modules() for name, child in parent._modules.items()]
    for root in roots.values():
        for module in root.modules():
            slots += [(module._parameters, name, t) for name, t in module._parameters.items()]
            slots += [(module._buffers, name, t) for name, t in module._buffers.items()]
    return slots
