"""DistributedDataParallel and freezing: a changed freeze state never desynchronises ranks silently.

``DistributedDataParallel`` decides which parameters it all-reduces once, when it
is built: those with ``requires_grad=True`` then. Freeze before wrapping and
everything works, ``find_unused_parameters=False`` included. Change the freeze
state of a wrapped model and DDP goes wrong: a parameter unfrozen afterwards
gets local gradients that are never averaged (ranks drift apart, silently), and
one frozen afterwards leaves DDP waiting for a gradient that never comes.

So a :class:`~freezable.Freezable` whose freeze state changes while
``torch.distributed`` is initialised watches the DDP wrapper it runs in: at each
forward through DDP it compares the parameters DDP's reducer was built with
against the ones trainable now, and raises :class:`DDPFreezeStateError` on a
mismatch, before any gradient is computed. The fix is :func:`rewrap_ddp`::

    ddp = DistributedDataParallel(model)          # model frozen as wanted
    ...
    model.unfreeze("stage4")                      # on every rank
    ddp = fz.rewrap_ddp(ddp)                      # same settings, reducer rebuilt
    # the optimizer holds the same parameters: keep it (param_groups) or add to it (unfreeze(optimizer=))
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .errors import DDPFreezeStateError, FreezableError, shorten, type_error

__all__ = ["DDPFreezeStateError", "rewrap_ddp", "watch_ddp", "unwatch_ddp", "reduced_parameters"]

_CACHE = "_freezable_reducer_params"  # on the DDP wrapper: (reducer, ids reduced, ids managed, per-module lists)


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def watch_ddp(model: nn.Module) -> None:
    """Makes ``model`` check, at each forward through DDP, that DDP still reduces exactly its trainable parameters.

    Called by every change of freeze state; does something only while ``torch.distributed``
    is initialised (a DDP wrapper can only exist then). Idempotent.
    """
    if not _dist_initialized():
        return
    if not any(hook is _check_ddp for hook in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(_check_ddp)


def unwatch_ddp(model: nn.Module) -> None:
    """Undoes :func:`watch_ddp`."""
    for key, hook in list(model._forward_pre_hooks.items()):
        if hook is _check_ddp:
            del model._forward_pre_hooks[key]


def _active_ddp() -> Any:
    if not torch.distributed.is_available():
        return None
    return nn.parallel.DistributedDataParallel._get_active_ddp_module()


def reduced_parameters(ddp: nn.parallel.DistributedDataParallel) -> set[int] | None:
    """Ids of the parameters ``ddp``'s reducer all-reduces (those trainable when it was built).

    The reducer hands them out only with zero-filled copies of its gradient buckets, so this
    allocates, briefly, memory the size of the synchronised gradients. ``None`` for a torch
    whose reducer does not expose its buckets.
    """
    buckets = getattr(getattr(ddp, "reducer", None), "_get_zeros_like_grad_buckets", None)
    if buckets is None:
        return None
    with torch.no_grad():
        return {id(p) for bucket in buckets() for p in bucket.parameters()}


def _expected(ddp: nn.parallel.DistributedDataParallel, module: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    """``(parameter, whether ddp's reducer all-reduces it)`` for each of ``module``'s parameters that ddp manages.

    Computed once per reducer and module: the reducer's buckets list its parameters exactly (reading them
    allocates one gradient-sized buffer, briefly).
    """
    reducer = ddp.reducer
    cached = ddp.__dict__.get(_CACHE)
    if cached is None or cached[0] is not reducer:
        reduced = reduced_parameters(ddp)
        if reduced is None:  # nothing to compare with
            return []
        managed = {id(p) for p in ddp._module_parameters}
        cached = ddp.__dict__[_CACHE] = (reducer, reduced, managed, {})
    _, reduced, managed, per_module = cached
    if id(module) not in per_module:
        per_module[id(module)] = [(p, id(p) in reduced) for p in module.parameters() if id(p) in managed]
    return per_module[id(module)]


def _check_ddp(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: raise when the freeze state no longer matches the DDP wrapper running ``module``."""
    if torch.compiler.is_compiling():
        return
    ddp = _active_ddp()
    if ddp is None or getattr(ddp, "reducer", None) is None or not torch.is_grad_enabled():
        return
    if all(p.requires_grad == reduced for p, reduced in _expected(ddp, module)):
        return
    expected = {id(p): reduced for p, reduced in _expected(ddp, module)}
    unfrozen, frozen = [], []
    for name, p in module.named_parameters():
        if id(p) in expected and p.requires_grad != expected[id(p)]:
            (unfrozen if p.requires_grad else frozen).append(name)
    changed = []
    if unfrozen:
        changed.append(f"unfrozen: {shorten(unfrozen)}")
    if frozen:
        changed.append(f"frozen: {shorten(frozen)}")
    raise DDPFreezeStateError(
        f"the freeze state of {type(module).__name__} changed after it was wrapped in DistributedDataParallel "
        f"({'; '.join(changed)}); DDP would not synchronise those gradients across ranks. Rebuild the wrapper "
        f"on every rank after changing the freeze state: ddp_model = freezable.rewrap_ddp(ddp_model)"
    )


def rewrap_ddp(ddp: nn.parallel.DistributedDataParallel, **overrides: Any) -> nn.parallel.DistributedDataParallel:
    """A new ``DistributedDataParallel`` around ``ddp.module``, with ``ddp``'s settings, for the current freeze state.

    Call it on every rank after changing the freeze state of a wrapped model, and use the
    returned wrapper from then on (the old one stops reducing gradients). Parameters are
    the same objects, so the optimizer stays valid. Settings carried over: device ids,
    output device, ``dim``, process group or device mesh, bucket size, buffer syncing,
    ``find_unused_parameters``, ``gradient_as_bucket_view``, ``static_graph``,
    ``mixed_precision`` and registered communication hooks.

    Args:
        ddp: the wrapper to rebuild.
        **overrides: constructor arguments to change (``find_unused_parameters=True``, say).

    Returns:
        The new wrapper.

    Raises:
        FreezableTypeError: ``ddp`` is not a ``DistributedDataParallel``.
        FreezableError: ``ddp`` uses ``delay_all_reduce_named_params``, which cannot be carried over.
    """
    ddp_type = nn.parallel.DistributedDataParallel
    if not isinstance(ddp, ddp_type):
        raise type_error("rewrap_ddp's argument", ddp, "a DistributedDataParallel")
    if getattr(ddp, "_delay_all_reduce_params", None):
        raise FreezableError("rewrap_ddp cannot carry over delay_all_reduce_named_params; build the wrapper anew")
    accepted = inspect.signature(ddp_type.__init__).parameters
    settings: dict[str, Any] = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "dim": ddp.dim,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": ddp.static_graph,
        "mixed_precision": getattr(ddp, "mixed_precision", None),
        "bucket_cap_mb": ddp.bucket_bytes_cap / (1024 * 1024),
        "skip_all_reduce_unused_params": getattr(ddp, "skip_all_reduce_unused_params", False),
        "batched_grad_copy": getattr(ddp, "batched_grad_copy", False),
    }
    if "device_mesh" in ddp.__dict__:
        settings["device_mesh"] = ddp.device_mesh
    else:
        settings["process_group"] = ddp.process_group
    if "forward_sync_buffers" in accepted:
        settings["forward_sync_buffers"] = ddp.forward_sync_buffers
    else:
        settings["broadcast_buffers"] = ddp.broadcast_buffers
    settings = {k: v for k, v in settings.items() if k in accepted}
    settings.update(overrides)
    hooks = list(getattr(ddp, "_comm_hooks", []))
    new = ddp_type(ddp.module, **settings)
    remove_hooks = getattr(ddp.reducer, "_remove_autograd_hooks", None)  # torch >= 2.1
    if remove_hooks is not None:
        remove_hooks()  # the old wrapper must not touch gradients any more
    for hook, state in hooks[len(getattr(new, "_comm_hooks", [])):]:
        new.register_comm_hook(state, hook)
    return new
