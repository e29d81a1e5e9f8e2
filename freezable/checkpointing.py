"""Reentrant gradient checkpointing after a frozen part: the checkpointed layers silently get no gradient.

``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)`` computes gradients only for the inputs of
the checkpointed function. When everything before the first checkpointed block is frozen, that block's input
needs no gradient, so autograd never enters the block in backward: its trainable parameters keep
``.grad = None`` (transformers issues #21381, #23170, #26221). :func:`reentrant_after_frozen` finds that case
on models that use transformers' convention (a module's ``gradient_checkpointing`` flag and its
``_gradient_checkpointing_func``); the fixes are ``use_reentrant=False`` or
``model.enable_input_require_grads()``.
"""

from __future__ import annotations

import functools

from torch import nn

__all__ = ["reentrant_after_frozen"]

_INPUT_GRAD_HOOK = "make_inputs_require_grads"  # the hook enable_input_require_grads() puts on the embeddings


def _reentrant(module: nn.Module) -> bool:
    func = getattr(module, "_gradient_checkpointing_func", None)
    return (getattr(module, "gradient_checkpointing", False) is True and isinstance(func, functools.partial)
            and func.keywords.get("use_reentrant") is True)


def reentrant_after_frozen(model: nn.Module) -> list[str]:
    """A sentence when reentrant checkpointing starts after a frozen part and would train nothing inside.

    Example:
        >>> import functools, torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)).requires_grad_(False)
        >>> net[1].weight.requires_grad_(True)
        Parameter containing: ...
        >>> net[1].gradient_checkpointing = True
        >>> net[1]._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
        >>> print(reentrant_after_frozen(net)[0][:80])
        reentrant gradient checkpointing (use_reentrant=True) starts at '1' after a froz
    """
    flagged = [(n, m) for n, m in model.named_modules() if _reentrant(m)]
    blocks = [(n, m) for n, m in flagged if not any(o != n and o.startswith(n + ".") if n else o for o, _ in flagged)]
    if not blocks:
        return []
    first, _ = blocks[0]
    if any(getattr(h, "__name__", "") == _INPUT_GRAD_HOOK for m in model.modules() for h in m._forward_hooks.values()):
        return []
    before: list[bool] = []
    for name, param in model.named_parameters():
        if name.startswith(first + "."):
            break
        before.append(param.requires_grad)
    inside = [n for b, m in blocks for n, p in m.named_parameters(prefix=b) if p.requires_grad]
    if any(before) or not inside:
        return []
    return [
        f"reentrant gradient checkpointing (use_reentrant=True) starts at '{first}' after a frozen part: that "
        f"block's input needs no gradient, so the {len(inside)} trainable parameter(s) inside the checkpointed "
        f"blocks get none (.grad stays None; first: '{inside[0]}'); checkpoint with use_reentrant=False "
        f"(gradient_checkpointing_enable(gradient_checkpointing_kwargs={{'use_reentrant': False}})) or call "
        f"model.enable_input_require_grads()"
    ]
