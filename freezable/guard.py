"""The drift guard: fingerprints of frozen tensors, to prove later that they did not move.

``model.freeze(*groups, guard=True)`` records, for every parameter the call froze and
every buffer of every module it froze (BatchNorm running statistics included), a
BLAKE2b digest of the tensor's bytes together with its dtype and shape. Any change,
down to a single bit, gives another digest; :func:`freezable.check` recomputes the
digests and names every frozen tensor that changed.

Cost: 16 bytes of digest (plus the name) per tensor, nothing per element, so the guard
of a 25M-parameter ResNet-50 takes a few kilobytes, not a copy of the weights. Recording
and verifying read each guarded tensor once (for tensors on an accelerator, a copy to
host memory, one tensor at a time). Tensors on the meta device have no data and are not
fingerprinted.

The fingerprints live in the module's ``__dict__``, names relative to the model's freeze
root: they survive ``copy.deepcopy`` and pickling of the whole module and never enter
``state_dict()``. A tensor is watched while it stays frozen; ``unfreeze`` drops the
guard on what it unfreezes, and ``freeze(..., guard=True)`` again records afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ._state import freeze_root, is_frozen, swapped_in
from .errors import FreezableError, shorten
from .groups import Group

__all__ = ["Fingerprint", "fingerprint", "check_recordable", "record", "forget", "verify", "guarded_names", "save",
           "restore"]

_GUARD = "_freezable_guard"


@dataclass(frozen=True)
class Fingerprint:
    """What the guard keeps of one tensor."""

    dtype: str  # e.g. "torch.float32"
    shape: tuple[int, ...]  # the tensor's shape
    digest: bytes | None  # BLAKE2b-128 of the tensor's bytes; None on the meta device (no data)


def fingerprint(tensor: torch.Tensor) -> Fingerprint:
    """A digest of ``tensor``'s dtype, shape and bytes: any single-bit change gives another one.

    Example:
        >>> t = torch.ones(3)
        >>> before = fingerprint(t)
        >>> t.view(torch.int32)[1] ^= 1  # flip the lowest bit of one element
        >>> fingerprint(t) == before, fingerprint(torch.ones(3)) == before
        (False, True)
    """
    tensor = tensor.detach()
    if tensor.is_meta:
        return Fingerprint(str(tensor.dtype), tuple(tensor.shape), None)
    data = tensor.reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
    return Fingerprint(str(tensor.dtype), tuple(tensor.shape), hashlib.blake2b(data, digest_size=16).digest())


def check_recordable(model: nn.Module, groups: Iterable[Group]) -> None:
    """Raises before anything changes when ``groups`` hold a tensor with no data to fingerprint yet.

    Raises:
        FreezableError: a lazy module's parameter or buffer is not materialised (before its first forward).
    """
    root = freeze_root(model)
    lazy: dict[str, None] = {}  # an ordered set of names
    for group in groups:
        lazy.update((name, None) for name, p in group.named_parameters(root) if is_lazy(p))
        for name, module in group.named_modules(root):
            lazy.update((b, None) for b, t in module.named_buffers(prefix=name, recurse=False) if is_lazy(t))
    if lazy:
        raise FreezableError(
            f"freeze(..., guard=True) cannot fingerprint {len(lazy)} tensor(s) of lazy modules not materialised yet "
            f"({shorten(list(lazy))}); run one forward first, then freeze with guard=True"
        )


def _store(model: nn.Module) -> dict[str, dict[str, Fingerprint]]:
    return model.__dict__.setdefault(_GUARD, {"parameters": {}, "buffers": {}})


def record(model: nn.Module, groups: Iterable[Group]) -> None:
    """Fingerprints what ``groups`` hold frozen now: frozen parameters, and buffers of frozen modules."""
    root = freeze_root(model)
    store = _store(model)
    for group in groups:
        for name, param in group.named_parameters(root):
            if not param.requires_grad:
                store["parameters"][name] = fingerprint(param)
        for name, module in group.named_modules(root):
            if is_frozen(module):
                for bname, buffer in module.named_buffers(prefix=name, recurse=False):
                    if buffer is not None:
                        store["buffers"][bname] = fingerprint(buffer)


def forget(model: nn.Module, groups: Iterable[Group]) -> None:
    """Drops the guard on every tensor that ``groups`` hold (called by ``unfreeze``)."""
    store = model.__dict__.get(_GUARD)
    if not store:
        return
    root = freeze_root(model)
    released: set[int] = set()
    for group in groups:
        released.update(id(p) for _, p in group.named_parameters(root))
        for _, module in group.named_modules(root):
            released.update(id(b) for b in module.buffers(recurse=False))
    for kind, entries in store.items():
        for name in list(entries):
            tensor = _lookup(root, kind, name)
            if tensor is None or id(tensor) in released:
                del entries[name]


def save(model: nn.Module) -> dict[str, dict[str, Fingerprint]] | None:
    """A copy of ``model``'s guard (``None``: it has none), for :func:`restore`."""
    store = model.__dict__.get(_GUARD)
    return None if store is None else {kind: dict(entries) for kind, entries in store.items()}


def restore(model: nn.Module, saved: dict[str, dict[str, Fingerprint]] | None) -> None:
    """Puts back the guard :func:`save` copied: the same tensors watched against the same fingerprints."""
    if saved is None:
        model.__dict__.pop(_GUARD, None)
    else:
        model.__dict__[_GUARD] = {kind: dict(entries) for kind, entries in saved.items()}


def guarded_names(model: nn.Module) -> list[str]:
    """Names of the tensors the guard of ``model`` watches (empty for a model without a guard)."""
    store = model.__dict__.get(_GUARD) or {}
    return sorted(name for entries in store.values() for name in entries)


def _lookup(root: nn.Module, kind: str, name: str) -> torch.Tensor | None:
    try:
        return root.get_parameter(name) if kind == "parameters" else root.get_buffer(name)
    except AttributeError:
        return None


def verify(model: nn.Module, prefix: str = "") -> list[str]:
    """One sentence per guarded frozen tensor that changed (or vanished) since it was recorded.

    A tensor that is no longer frozen (made trainable since, by ``load_freeze_state`` or by
    hand) is no longer watched. A buffer of a module swapped in at a frozen place (a BatchNorm
    converted to SyncBatchNorm) is watched as the one it replaced, by name.

    Args:
        model: a Freezable that may carry a guard.
        prefix: the model's name inside the module the user checks, for the messages.
    """
    store = model.__dict__.get(_GUARD)
    if not store:
        return []
    root = freeze_root(model)
    root_prefix = prefix
    if root is not model:
        root_prefix = ".".join(p for p in (prefix, _child_name(model, root)) if p)
    owners = {name: module for name, module in root.named_modules(remove_duplicate=False)}
    swapped = {id(module) for _, module in swapped_in(model)}  # at a frozen place, not yet marked: watched too
    problems = []
    for kind, entries in store.items():
        for name, recorded in entries.items():
            full = f"{root_prefix}.{name}" if root_prefix else name
            what = "parameter" if kind == "parameters" else "buffer"
            tensor = _lookup(root, kind, name)
            if tensor is None:
                problems.append(f"guarded frozen {what} '{full}' is no longer in the model")
                continue
            if kind == "parameters" and tensor.requires_grad:
                continue
            owner = owners.get(name.rpartition(".")[0])
            if kind == "buffers" and (owner is None or not (is_frozen(owner) or id(owner) in swapped)):
                continue
            if recorded.digest is None:
                continue
            now = fingerprint(tensor)
            if now != recorded:
                how = "" if now.shape == recorded.shape and now.dtype == recorded.dtype else (
                    f" (was {recorded.dtype} {list(recorded.shape)}, now {now.dtype} {list(now.shape)})")
                problems.append(f"frozen {what} '{full}' changed since freeze(guard=True){how}")
    return problems


def _child_name(model: nn.Module, root: nn.Module) -> str:
    for name, module in model.named_children():
        if module is root:
            return name
    return ""
