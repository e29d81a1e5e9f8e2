"""The fast path's state: the options a :class:`~freezable.FrozenBackbone` was given, and the shadow built.

The wrapper keeps a :class:`FastOptions` (what ``fast=`` and ``frozen_dtype=`` asked for, checked once) and,
while ``fast`` is on, the :class:`FastPath` last built, or ``None`` until the next forward builds one.
A shadow serves the backbone it was built from until it is stale (see :meth:`FastPath.serves`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._state import hold_changes, runs_frozen
from ..errors import FreezableError, type_error

__all__ = ["FastOptions", "FastPath", "held_roots"]

_VERSION = operator.attrgetter("_version")


@dataclass(frozen=True)
class FastOptions:
    """What ``FrozenBackbone(fast=..., frozen_dtype=...)`` asked for; checked when made.

    Example:
        >>> FastOptions(True, torch.bfloat16).frozen_dtype
        torch.bfloat16
        >>> FastOptions(False, torch.bfloat16)
        Traceback (most recent call last):
        ...
        freezable.errors.FreezableError: frozen_dtype=torch.bfloat16 needs fast=True: only the fast path stores frozen copies
    """

    enabled: bool = False  # run the frozen parts through the inference-optimised shadow
    frozen_dtype: torch.dtype | None = None  # the dtype the shadow's frozen copies are stored in (None: their own)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise type_error("fast", self.enabled, "a bool")
        dtype = self.frozen_dtype
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise type_error("frozen_dtype", dtype, "a floating torch.dtype such as torch.bfloat16, or None")
        if dtype is not None and not dtype.is_floating_point:
            raise FreezableError(f"frozen_dtype must be a floating torch.dtype such as torch.bfloat16, not {dtype!r}")
        if dtype is not None and not self.enabled:
            raise FreezableError(f"frozen_dtype={dtype} needs fast=True: only the fast path stores frozen copies")


@dataclass
class FastPath:
    """The shadow module and what tells when it is stale."""

    # the backbone with its held parts replaced by inference-optimised copies (the backbone itself when none is)
    module: nn.Module
    # the backbone it was built from (a wrapper whose backbone was replaced needs another)
    origin: nn.Module
    # the held parts it replaced with copies, by name
    roots: list[tuple[str, nn.Module]] = field(default_factory=list)
    # original tensors the copies were derived from, with their version counters at build time
    sources: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    # (shallow copy, original) for modules above held parts, whose mode must follow the original's
    mixed: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)
    # conv-BatchNorm pairs folded, as names in the backbone
    folded: list[tuple[str, str]] = field(default_factory=list)
    # (dict, key, object) the shadow was built from: every submodule of the backbone in its parent's
    # _modules, every parameter and buffer of a held part in its module's _parameters or _buffers
    slots: list[tuple[dict[str, Any], str, Any]] = field(default_factory=list)
    # the count of hold changes at the build (see freezable._state.hold_changes)
    holds_seen: int = field(default_factory=hold_changes)

    def __post_init__(self) -> None:
        # the columns of slots and sources, for is_stale's C-level loops (map, not a Python generator)
        self._stores, self._keys, self._objects = (tuple(c) for c in zip(*self.slots)) if self.slots else ((),) * 3
        self._tensors, self._versions = (tuple(c) for c in zip(*self.sources)) if self.sources else ((), ())

    def serves(self, backbone: nn.Module) -> bool:
        """Whether this shadow may run in place of ``backbone`` now: built from it, and not stale.

        While ``torch.compile`` traces, a shadow built already always serves: the checks are not traced.
        """
        return torch.compiler.is_compiling() or (self.origin is backbone and not self.is_stale())

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
        if [(n, id(m)) for n, m in held_roots(self.origin)] != [(n, id(m)) for n, m in self.roots]:
            return True
        self.holds_seen = now
        return False

    def sync_modes(self) -> None:
        """Gives the shallow copies of modules above held parts their originals' training mode."""
        for shadow, original in self.mixed:
            shadow.training = original.training


def held_roots(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The top-most submodules that run frozen (see :func:`freezable._state.runs_frozen`): what the shadow copies.

    A norm layer held by norm_eval whose affine parameters train stays the original, shared and trained; a
    container without a forward (ModuleList, ModuleDict) is iterated by its parent, never called: its children
    are the roots, so that it stays a container of the same type (shallow-copied, as mixed ones are).
    """
    if runs_frozen(module) and type(module).forward is not nn.Module.forward:
        yield prefix, module
        return
    for name, child in module._modules.items():
        if child is not None:
            yield from held_roots(child, f"{prefix}.{name}" if prefix else name)
