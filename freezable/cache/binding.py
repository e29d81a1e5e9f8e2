"""What a :class:`~freezable.FeatureCache` entry is bound to: the exact weights, and (optionally) its input.

Weights: a fingerprint of the backbone, combining the guard's digest
(:func:`freezable.guard.fingerprint`: dtype, shape and every byte) of each parameter and buffer
with their names and the class of every submodule. Computing it reads every weight once (a
ResNet-50: about a quarter of a second on a CPU), so a cache does it when it is built, when it
opens a directory, and when the cheap per-call stamp moves: the identity and version counter of
each parameter and buffer, and the identity of each submodule. Every in-place write through the
tensor (``p.add_()``, ``p.copy_()``, an optimizer step, ``load_state_dict``) bumps the version
counter; ``load_state_dict(assign=True)`` or a replaced module changes an identity. Writes through
``p.data`` bypass the version counter: only a full check sees them.

Inputs: four numbers per sample, its sum, its norm and two fixed pseudo-random projections (a
flip or a crop moves these even where the sum stays), compared with a tolerance of 1e-4 of the
largest: 25 times the float32 rounding measured between batches of 64 and of 1 at 224 px (4e-6),
and far below what a random crop, a flip or color jitter changes (1e-2 and more).
"""

from __future__ import annotations

import functools
import hashlib

import torch
from torch import nn

from ..guard import Fingerprint, fingerprint

__all__ = ["WeightsWatch", "weights_fingerprint", "changed_tensors", "input_prints", "same_input"]


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def weights_fingerprint(module: nn.Module) -> tuple[str, dict[str, Fingerprint]]:
    """A hex digest of ``module``'s classes, parameters and buffers, and the fingerprint of each tensor."""
    tensors = {f"parameter {name}": fingerprint(p) for name, p in module.named_parameters()}
    tensors.update({f"buffer {name}": fingerprint(b) for name, b in module.named_buffers()})
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        h.update(f"module {name}: {_class_name(sub)}\n".encode())
    for name, print_ in tensors.items():
        h.update(f"{name}: {print_.dtype} {list(print_.shape)}\n".encode())
        h.update(print_.digest or b"no data (meta)")
    return h.hexdigest(), tensors


def changed_tensors(old: dict[str, Fingerprint], new: dict[str, Fingerprint]) -> list[str]:
    """The tensors (``"parameter fc.weight"``) that differ, appeared or vanished between two fingerprints."""
    return [name for name in [*old, *(n for n in new if n not in old)] if old.get(name) != new.get(name)]


def _stamp(module: nn.Module) -> list[tuple[object, int]]:
    """Each submodule, parameter and buffer with its version counter: cheap, and moves with any change."""
    return ([(m, 0) for m in module.modules()] + [(p, p._version) for p in module.parameters()]
            + [(b, b._version) for b in module.buffers()])


class WeightsWatch:
    """The weights a cache is bound to: their fingerprint, and the per-call stamp taken with it.

    Example:
        >>> layer = nn.Linear(2, 2).requires_grad_(False)
        >>> watch = WeightsWatch(layer)
        >>> watch.moved()
        False
        >>> _ = layer.weight.mul_(1)  # an in-place write: the stamp moves, the fingerprint does not
        >>> watch.moved(), weights_fingerprint(layer)[0] == watch.digest
        (True, True)
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.rebind(*weights_fingerprint(module))

    def rebind(self, digest: str, tensors: dict[str, Fingerprint]) -> None:
        """Binds to the fingerprint just computed for the module as it is now."""
        self.digest = digest
        self.tensors = tensors
        self._stamp = _stamp(self.module)  # holds the objects, so their ids cannot be reused

    def moved(self) -> bool:
        """Whether a submodule, parameter or buffer was replaced or written since the fingerprint."""
        now = _stamp(self.module)
        return len(now) != len(self._stamp) or any(
            a is not b or u != v for (a, u), (b, v) in zip(now, self._stamp))


@functools.lru_cache(maxsize=4)
def _projections(numel: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed pseudo-random weight vectors in [-0.5, 0.5), the same in every process and torch version."""
    i = torch.arange(numel, dtype=torch.int64)
    w = [((i * a + b) % 2**32).double() / 2**32 - 0.5 for a, b in ((2654435761, 12345), (2246822519, 67890))]
    return w[0].to(device, dtype), w[1].to(device, dtype)


def input_prints(x: torch.Tensor) -> torch.Tensor:
    """Four numbers per sample of batch ``x``: sum, norm, two projections (float64, on the CPU).

    Computed in float32 (float64 for float64 inputs) without a copy of the batch: one pass for
    each number, a matrix-vector product for each projection.

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> a, b = input_prints(torch.cat([x[:1], x[:1].flip(-1)]))
        >>> same_input(a, b), same_input(a, input_prints(x[:1])[0])  # flipped: another input
        (False, True)
    """
    flat = x.detach().reshape(len(x), -1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    w1, w2 = _projections(flat.shape[1], flat.dtype, flat.device)
    stats = [flat.sum(1), torch.linalg.vector_norm(flat, dim=1), flat @ w1, flat @ w2]
    return torch.stack(stats, 1).double().cpu()


def same_input(recorded: torch.Tensor, now: torch.Tensor) -> bool:
    """Whether two input prints agree within float32 rounding (1e-4 of the largest of them)."""
    scale = float(recorded.abs().max()) if recorded.numel() else 0.0
    return recorded.shape == now.shape and torch.allclose(now, recorded, rtol=1e-4, atol=1e-4 * scale)
