"""``FeatureCache``: a fully frozen backbone's outputs, computed once per sample and then looked up.

For linear probing (a frozen backbone, a trained head, no random augmentation) the backbone's
output for a sample is the same every epoch, so every epoch after the first need only run the
head. The cache keys outputs by a sample key that the data loader yields beside each input (a
dataset index, a file name): the key must identify the exact input tensor, so random
augmentation must be off.

It refuses, with :class:`~freezable.FreezableError`, whatever would make a cached output differ
from a fresh one: a backbone with a trainable parameter, a module in training mode whose output
differs in training (dropout, drop-path, BatchNorm and other running-statistics norms), an input
that needs a gradient, or a key list that does not match the batch.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FreezableError, FreezableTypeError
from ._state import is_held

__all__ = ["FeatureCache"]

_STOCHASTIC_NAMES = ("DropPath", "StochasticDepth", "DropBlock2d")  # timm, torchvision: random in training
_FORMAT = "freezable.feature_cache"


def _differs_in_training(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return True
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm kinds, InstanceNorm with statistics
        return module.track_running_stats or isinstance(module, nn.modules.batchnorm._BatchNorm)
    return type(module).__name__ in _STOCHASTIC_NAMES


def _key(key: object) -> Hashable:
    if isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point():
        return int(key.item())
    if isinstance(key, bool) or not isinstance(key, (int, str, tuple)):
        raise FreezableTypeError(f"a FeatureCache key must be an int, a str or a tuple of them, not "
                                 f"{type(key).__name__}: {key!r}")
    if isinstance(key, tuple):
        return tuple(_key(k) for k in key)
    return key


class FeatureCache:
    """Caches a fully frozen backbone's output per sample, in memory (capped) and optionally on disk.

    Memory holds the most recently used samples: when a cap (``max_items`` or ``max_bytes``) would
    be exceeded, the least recently used ones are evicted. With ``directory`` every computed output is
    also written there (one ``torch.save`` file per sample, read back with ``weights_only=True``), so a
    miss in memory is looked up on disk before the backbone runs, in this process or a later one.

    Clear the cache (and the directory) whenever the backbone's weights change: it cannot tell.

    Args:
        backbone: a fully frozen module, typically ``fz.FrozenBackbone(model)``. Its output for one
            batch must be a tensor, or a list or tuple of tensors, with the batch as first dimension.
        max_items: most samples kept in memory (``None``: no limit).
        max_bytes: most bytes of outputs kept in memory (``None``: no limit).
        directory: where to keep outputs on disk (created if missing); ``None``: memory only.

    Raises:
        FreezableError: the backbone has a trainable parameter, or a cap is not a positive int.

    Example:
        >>> import torch, torchvision, freezable as fz
        >>> cache = fz.FeatureCache(fz.FrozenBackbone(torchvision.models.resnet18(num_classes=8)), max_items=100)
        >>> x = torch.randn(4, 3, 32, 32)
        >>> first = cache(x, keys=[0, 1, 2, 3])
        >>> again = cache(x[:2], keys=[0, 1])
        >>> torch.equal(first[:2], again), cache.hits, cache.misses, len(cache)
        (True, 2, 4, 4)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        max_items: int | None = None,
        max_bytes: int | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise FreezableTypeError(f"FeatureCache caches an nn.Module's outputs, not {type(backbone).__name__}")
        for name, cap in (("max_items", max_items), ("max_bytes", max_bytes)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise FreezableError(f"{name} must be a positive int or None, not {cap!r}")
        self.backbone = backbone
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.directory = None if directory is None else Path(directory)
        self._check_frozen()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._memory: OrderedDict[Hashable, tuple[str, list[torch.Tensor]]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def __repr__(self) -> str:
        where = f", directory={str(self.directory)!r}" if self.directory is not None else ""
        return (f"FeatureCache({len(self)} items, {self.nbytes / 2**20:.1f} MiB, hits={self.hits}, "
                f"misses={self.misses}{where})")

    def clear(self, disk: bool = False) -> None:
        """Forgets every cached output (and, with ``disk=True``, deletes the directory's cache files)."""
        self._memory.clear()
        self.nbytes = 0
        if disk and self.directory is not None:
            for path in self.directory.glob("*.pt"):
                path.unlink()

    # -- checks -------------------------------------------------------------------------

    def _check_frozen(self) -> None:
        trainable = [n for n, p in self.backbone.named_parameters() if p.requires_grad]
        if trainable:
            shown = ", ".join(trainable[:3]) + (f" and {len(trainable) - 3} more" if len(trainable) > 3 else "")
            raise FreezableError(f"FeatureCache needs a fully frozen backbone, but {len(trainable)} parameters "
                                 f"train: {shown}; freeze them (fz.FrozenBackbone(model)) or don't cache")

    def _check_deterministic(self) -> None:
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
                raise FreezableError(
                    f"FeatureCache refuses a backbone whose outputs vary: {name!r} ({type(module).__name__}) keeps "
                    "no running statistics, so a sample's output depends on the rest of its batch"
                )
            if module.training and not is_held(module) and _differs_in_training(module):
                raise FreezableError(
                    f"FeatureCache refuses a backbone whose outputs vary: {name or 'the backbone'!r} "
                    f"({type(module).__name__}) is in training mode; freeze it with fz.FrozenBackbone "
                    "(held in eval) or call .eval()"
                )

    # -- lookup -------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, keys: Sequence[Any] | torch.Tensor) -> Any:
        """The backbone's output for batch ``x``, one sample per key: cached ones looked up, others computed.

        Args:
            x: a batch of inputs (first dimension: samples), the same each time a key is seen.
            keys: one key per sample: ints, strs or tuples of them, or an integer tensor.

        Returns:
            What the backbone returns for ``x`` (a normal tensor, no autograd graph).

        Raises:
            FreezableError: the backbone is no longer fully frozen or deterministic, ``x`` needs a
                gradient, or the keys do not match the batch.
        """
        if not isinstance(x, torch.Tensor):
            raise FreezableTypeError(f"FeatureCache takes a batch tensor, not {type(x).__name__}")
        if x.requires_grad:
            raise FreezableError("FeatureCache input requires grad; cached outputs carry no gradient")
        self._check_frozen()
        self._check_deterministic()
        keys = self._keys(keys, len(x))
        found: dict[int, tuple[str, list[torch.Tensor]]] = {}
        for i, key in enumerate(keys):
            entry = self._get(key)
            if entry is not None:
                found[i] = entry
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            index = torch.tensor(missing, device=x.device)
            with torch.inference_mode():
                out = self.backbone(x if len(missing) == len(keys) else x.index_select(0, index))
            kind, leaves = _flatten(out, len(missing))
            for j, i in enumerate(missing):
                entry = (kind, [leaf[j].clone() for leaf in leaves])  # clone: a normal tensor of its own
                found[i] = entry
                self._put(keys[i], entry)
        kinds = {found[i][0] for i in found}
        if len(kinds) > 1:
            raise FreezableError(f"cached outputs of different kinds {sorted(kinds)}; was the backbone changed? "
                                 "call cache.clear(disk=True)")
        n_leaves = len(found[0][1])
        stacked = [torch.stack([found[i][1][leaf] for i in range(len(keys))]) for leaf in range(n_leaves)]
        return _unflatten(kinds.pop(), stacked)

    @staticmethod
    def _keys(keys: Sequence[Any] | torch.Tensor, batch: int) -> list[Hashable]:
        if isinstance(keys, torch.Tensor):
            if keys.dim() != 1 or keys.is_floating_point():
                raise FreezableError(f"tensor keys must be a 1-d integer tensor, got shape {tuple(keys.shape)} "
                                     f"and dtype {keys.dtype}")
            keys = keys.tolist()
        elif isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise FreezableTypeError(f"keys must be a sequence with one key per sample, not {type(keys).__name__}")
        if len(keys) != batch:
            raise FreezableError(f"got {len(keys)} keys for a batch of {batch} samples; pass one key per sample")
        return [_key(k) for k in keys]

    def _get(self, key: Hashable) -> tuple[str, list[torch.Tensor]] | None:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            return entry
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        saved = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT or saved.get("key") != repr(key):
            raise FreezableError(f"{path} does not hold the cached output of key {key!r} "
                                 f"(it holds {saved.get('key') if isinstance(saved, dict) else 'something else'}); "
                                 "is the directory shared with another cache?")
        entry = (saved["kind"], list(saved["tensors"]))
        self._remember(key, entry)
        return entry

    def _put(self, key: Hashable, entry: tuple[str, list[torch.Tensor]]) -> None:
        if self.directory is not None:
            tensors = [t.cpu() for t in entry[1]]
            torch.save({"format": _FORMAT, "key": repr(key), "kind": entry[0], "tensors": tensors}, self._path(key))
        self._remember(key, entry)

    def _remember(self, key: Hashable, entry: tuple[str, list[torch.Tensor]]) -> None:
        size = sum(t.numel() * t.element_size() for t in entry[1])
        if self.max_bytes is not None and size > self.max_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self.nbytes -= sum(t.numel() * t.element_size() for t in old[1])
        self._memory[key] = entry
        self.nbytes += size
        while (self.max_items is not None and len(self._memory) > self.max_items) or (
            self.max_bytes is not None and self.nbytes > self.max_bytes
        ):
            _, evicted = self._memory.popitem(last=False)  # least recently used
            self.nbytes -= sum(t.numel() * t.element_size() for t in evicted[1])

    def _path(self, key: Hashable) -> Path:
        return self.directory / (hashlib.sha256(repr(key).encode()).hexdigest()[:40] + ".pt")  # type: ignore[operator]


def _flatten(out: Any, batch: int) -> tuple[str, list[torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        leaves, kind = [out], "tensor"
    elif isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        leaves, kind = list(out), type(out).__name__
    else:
        raise FreezableTypeError(f"FeatureCache caches a tensor or a list/tuple of tensors, not {type(out).__name__}")
    for leaf in leaves:
        if leaf.dim() == 0 or leaf.shape[0] != batch:
            raise FreezableError(f"the backbone returned shape {tuple(leaf.shape)} for a batch of {batch}; "
                                 "FeatureCache needs the batch as first dimension")
    return kind, leaves


def _unflatten(kind: str, leaves: list[torch.Tensor]) -> Any:
    if kind == "tensor":
        return leaves[0]
    return tuple(leaves) if kind == "tuple" else list(leaves)
