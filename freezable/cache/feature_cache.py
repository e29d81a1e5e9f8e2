"""``FeatureCache``: a fully frozen backbone's outputs, computed once per sample and then looked up.

For linear probing (a frozen backbone, a trained head, no random augmentation) the backbone's
output for a sample is the same every epoch, so every epoch after the first need only run the
head. The cache keys outputs by a sample key that the data loader yields beside each input (a
dataset index, a file name): the key must identify the exact input tensor, so random
augmentation must be off.

It refuses, with :class:`~freezable.FreezableError`, whatever would make a cached output differ
from a fresh one (:mod:`freezable.cache.checks`): a backbone with a trainable parameter, a module in training mode whose output
differs in training (dropout, drop-path, BatchNorm and other running-statistics norms), an input
that needs a gradient, or a key list that does not match the batch. It never serves an output
computed with other weights (see :mod:`freezable.cache.binding`) and never reads a half-written
file (see :mod:`freezable.cache.store`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FreezableError, closest, describe, shorten, type_error
from . import store
from .binding import WeightsWatch, changed_tensors, input_prints, same_input, weights_fingerprint
from .checks import check_cacheable, check_cap, check_frozen
from .store import Entry

__all__ = ["FeatureCache"]

_ON_MISMATCH = ("error", "clear")


def _key(key: object) -> Hashable:
    if isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point():
        return int(key.item())
    if isinstance(key, bool) or not isinstance(key, (int, str, tuple)):
        raise type_error("a FeatureCache key", key, "an int, a str or a tuple of them")
    if isinstance(key, tuple):
        return tuple(_key(k) for k in key)
    return key


class FeatureCache:
    """Caches a fully frozen backbone's output per sample, in memory (capped) and optionally on disk.

    Memory holds the most recently used samples: when a cap (``max_items`` or ``max_bytes``) would
    be exceeded, the least recently used ones are evicted. With ``directory`` every computed output is
    also written there (one file per sample, read back with ``weights_only=True``), so a miss in
    memory is looked up on disk before the backbone runs, in this process or a later one.

    Guarantees. A cache is bound to the exact weights that filled it: a fingerprint of the backbone's
    classes, parameters and buffers, taken when it is built and kept in the directory's manifest.
    Other weights (another directory's manifest), an in-place change, ``load_state_dict`` or a
    replaced module are detected before an entry is served: each call compares every tensor's version
    counter and identity and, only if one moved, fingerprints the weights again. Unchanged weights go
    on; changed ones raise :class:`~freezable.FreezableError` (``on_mismatch="error"``) or empty the
    cache and its directory (``on_mismatch="clear"``). Writes through ``p.data`` skip the version
    counter: call :meth:`check_weights` after them. Files are written to a temporary file and renamed
    (``os.replace``), so no reader, in any process, sees half a file; a truncated, corrupt or foreign
    file is a miss with one warning naming it, recomputed and replaced. With ``verify_inputs=True``
    each entry also records a fingerprint of its input, and the same key with another input raises.

    Cost, measured on a CPU (2 threads shared with other jobs, torch 2.14) with ResNet-50 at 224 px,
    batch 64 (``python benchmarks/feature_cache.py --checks --batch-size 64 --img-size 224
    --device cpu``): the per-call weights check takes 0.46 ms, against 17 to 35 s for the
    backbone's forward (a batch of misses; the spread is the machine's load) and 1.07 ms for a
    whole batch of 64 hits, check included. The full fingerprint, at construction, when opening a
    directory and when the check moved, takes 0.22 s. ``verify_inputs=True`` adds 46 ms of input
    fingerprint per batch: 0.2% of a forward, but 70 times a batch of hits.

    Args:
        backbone: a fully frozen module, typically ``fz.FrozenBackbone(model)``. Its output for one
            batch must be a tensor, or a list or tuple of tensors, with the batch as first dimension.
        max_items: most samples kept in memory (``None``: no limit).
        max_bytes: most bytes of outputs kept in memory (``None``: no limit).
        directory: where to keep outputs on disk (created if missing); ``None``: memory only.
        on_mismatch: what to do when the weights differ from those the cache (or the directory) was
            filled with: ``"error"`` raises, ``"clear"`` drops every entry (the directory's too) and
            starts afresh for the new weights.
        verify_inputs: also fingerprint each input, and refuse a known key with another input
            (random augmentation is the usual cause).

    Raises:
        FreezableError: the backbone has a trainable parameter, an argument is invalid, or (with
            ``on_mismatch="error"``) ``directory`` holds the features of other weights.

    Example:
        >>> import torch, torchvision, freezable as fz
        >>> cache = fz.FeatureCache(fz.FrozenBackbone(torchvision.models.resnet18(num_classes=8)), max_items=100)
        >>> x = torch.randn(4, 3, 32, 32)
        >>> first = cache(x, keys=[0, 1, 2, 3])
        >>> again = cache(x[:2], keys=[0, 1])
        >>> torch.equal(first[:2], again), cache.hits, cache.misses, len(cache)
        (True, 2, 4, 4)
        >>> _ = cache.backbone.load_state_dict(torchvision.models.resnet18(num_classes=8).state_dict())
        >>> cache(x[:2], keys=[0, 1])
        Traceback (most recent call last):
        ...
        freezable.errors.FreezableError: FeatureCache: the backbone's weights changed since the cache was filled ...
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        max_items: int | None = None,
        max_bytes: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        on_mismatch: str = "error",
        verify_inputs: bool = False,
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise type_error("FeatureCache's backbone", backbone, "an nn.Module instance")
        check_cap("max_items", max_items)
        check_cap("max_bytes", max_bytes)
        if not isinstance(on_mismatch, str) or on_mismatch not in _ON_MISMATCH:
            raise FreezableError(f"on_mismatch must be 'error' or 'clear', not {describe(on_mismatch)}; "
                                 f"{closest(on_mismatch, _ON_MISMATCH)}")
        if not isinstance(verify_inputs, bool):
            raise type_error("verify_inputs", verify_inputs, "a bool")
        self.backbone = backbone
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.directory = None if directory is None else Path(directory)
        self.on_mismatch = on_mismatch
        self.verify_inputs = verify_inputs
        check_frozen(self.backbone)
        self._weights = WeightsWatch(backbone)
        if self.directory is not None:
            self._open_directory(self.directory)
        self._memory: OrderedDict[Hashable, Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def __repr__(self) -> str:
        where = f", directory={str(self.directory)!r}" if self.directory is not None else ""
        return (f"FeatureCache({len(self)} items, {self.nbytes / 2**20:.1f} MiB, hits={self.hits}, "
                f"misses={self.misses}, weights={self.weights_fingerprint[:8]}{where})")

    @property
    def weights_fingerprint(self) -> str:
        """The hex fingerprint of the weights this cache's entries were computed with."""
        return self._weights.digest

    def clear(self, disk: bool = False) -> None:
        """Forgets every cached output and binds the cache to the backbone's weights as they are now.

        Args:
            disk: also delete the directory's cache files (and temporary files left by killed writers).

        Raises:
            FreezableError: the weights changed and ``disk=False`` although the cache has a directory,
                whose files belong to the old weights.
        """
        digest, tensors = weights_fingerprint(self.backbone)
        if digest != self._weights.digest and self.directory is not None and not disk:
            raise FreezableError(f"the backbone's weights changed, and {self.directory} holds the features of the "
                                 "old ones: call clear(disk=True) to delete them too, or use another directory")
        self._memory.clear()
        self.nbytes = 0
        if disk and self.directory is not None:
            store.remove_entries(self.directory)
            store.write_manifest(self.directory, digest, _describe(self.backbone))
        self._weights.rebind(digest, tensors)

    def extended(self, tail: nn.Module, *, batch_size: int = 256) -> FeatureCache:
        """A cache of ``tail(backbone(x))``, filled by running ``tail`` over this cache's entries (in memory only).

        For a frozen part that grows (progressive freezing freezes the next block): ``tail`` runs once over the
        cached outputs, in batches, instead of the whole backbone over every input again. The new cache's
        backbone is ``nn.Sequential(backbone, tail)`` and it is bound to both parts' weights; its entries keep
        their input fingerprints, and it keeps this cache's caps, ``on_mismatch`` and ``verify_inputs``, with no
        directory. Entries are computed in other batches than a fresh cache would (outputs agree to float
        rounding, as between batch sizes).

        Args:
            tail: a fully frozen, deterministic module taking this cache's output (one tensor per sample).
            batch_size: entries run through ``tail`` at once.

        Returns:
            The new cache; this one is left as it was.

        Raises:
            FreezableError: ``tail`` trains or varies (see the class), the cached outputs are not single tensors, or
                (``on_mismatch="error"``) this cache's weights changed since it was filled.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from freezable import FeatureCache
            >>> body, tail = nn.Linear(4, 4).requires_grad_(False), nn.Linear(4, 2).requires_grad_(False)
            >>> cache = FeatureCache(body)
            >>> x = torch.randn(3, 4)
            >>> _ = cache(x, keys=[0, 1, 2])
            >>> longer = cache.extended(tail)
            >>> len(longer), torch.allclose(longer(x, keys=[0, 1, 2]), tail(body(x))), longer.hits
            (3, True, 3)
        """
        if not isinstance(tail, nn.Module):
            raise type_error("FeatureCache.extended's tail", tail, "an nn.Module instance")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise type_error("batch_size", batch_size, "an int >= 1")
        check_cacheable(tail)
        kinds = {entry.kind for entry in self._memory.values()}
        if kinds - {"tensor"}:
            raise FreezableError(f"FeatureCache.extended needs outputs of one tensor per sample, not {sorted(kinds)}")
        self._check_weights()
        longer = FeatureCache(nn.Sequential(self.backbone, tail), max_items=self.max_items, max_bytes=self.max_bytes,
                              on_mismatch=self.on_mismatch, verify_inputs=self.verify_inputs)
        items = list(self._memory.items())  # least recently used first, so the new cache keeps that order
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            with torch.inference_mode():
                out = tail(torch.stack([entry.tensors[0] for _, entry in chunk]))
            if not isinstance(out, torch.Tensor) or out.dim() == 0 or len(out) != len(chunk):
                raise type_error("the tail's output", out, "a tensor with the batch as first dimension")
            for (key, entry), row in zip(chunk, out):
                longer._remember(key, Entry("tensor", [row.clone()], entry.inputs, entry.input_shape))
        return longer

    def check_weights(self) -> None:
        """Fingerprints the weights now, whatever their version counters say (after writes through ``.data``).

        Raises:
            FreezableError: they differ from the cache's and ``on_mismatch="error"``.
        """
        self._check_weights(full=True)

    # -- checks -------------------------------------------------------------------------

    def _check_weights(self, full: bool = False) -> None:
        """Per call: cheap unless a version counter or identity moved; then a full fingerprint."""
        if not full and not self._weights.moved():
            return
        digest, tensors = weights_fingerprint(self.backbone)
        if digest == self._weights.digest:  # written but equal (the same checkpoint loaded again)
            self._weights.rebind(digest, tensors)
            return
        if self.on_mismatch == "clear":
            self._memory.clear()
            self.nbytes = 0
            if self.directory is not None:
                store.remove_entries(self.directory)
                store.write_manifest(self.directory, digest, _describe(self.backbone))
            self._weights.rebind(digest, tensors)
            return
        changed = changed_tensors(self._weights.tensors, tensors)
        what = f"{len(changed)} tensors differ: {shorten(changed)}" if changed else "a submodule was replaced"
        where = f" and its directory {self.directory}" if self.directory is not None else ""
        raise FreezableError(
            f"FeatureCache: the backbone's weights changed since the cache was filled ({what}); its entries would "
            f"be stale features. Call cache.clear(disk=True) to drop them{where} and refill for the new weights, "
            "create the cache with on_mismatch='clear' to do that automatically, or restore the weights"
        )

    def _open_directory(self, directory: Path) -> None:
        """Binds the directory to the weights: checks its manifest, or writes one."""
        manifest = store.read_manifest(directory) if directory.is_dir() else None
        digest = self._weights.digest
        if manifest is not None and manifest.get("weights") != digest:
            if self.on_mismatch == "error":
                raise FreezableError(
                    f"FeatureCache: {directory} holds the features of other weights (its manifest "
                    f"{store.MANIFEST} records {manifest.get('backbone')} with fingerprint "
                    f"{str(manifest.get('weights'))[:12]}..., written {manifest.get('written')}; this backbone, "
                    f"{_describe(self.backbone)}, has {digest[:12]}...). Use one directory per set of weights, "
                    "or pass on_mismatch='clear' to delete those features and start afresh"
                )
            store.remove_entries(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if manifest is None or manifest.get("weights") != digest:
            store.write_manifest(directory, digest, _describe(self.backbone))

    # -- lookup -------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, keys: Sequence[Any] | torch.Tensor) -> Any:
        """The backbone's output for batch ``x``, one sample per key: cached ones looked up, others computed.

        Args:
            x: a batch of inputs (first dimension: samples), the same each time a key is seen.
            keys: one key per sample: ints, strs or tuples of them, or an integer tensor.

        Returns:
            What the backbone returns for ``x`` (a normal tensor, no autograd graph).

        Raises:
            FreezableError: the backbone is no longer fully frozen or deterministic, its weights changed
                (with ``on_mismatch="error"``), ``x`` needs a gradient, the keys do not match the batch,
                or (with ``verify_inputs=True``) a known key comes with another input.
        """
        if not isinstance(x, torch.Tensor):
            raise type_error("FeatureCache's input", x, "a batch tensor")
        if x.requires_grad:
            raise FreezableError("FeatureCache input requires grad; cached outputs carry no gradient")
        check_cacheable(self.backbone)
        keys = self._keys(keys, len(x))
        self._check_weights()
        prints = input_prints(x) if self.verify_inputs else None
        found: dict[int, Entry] = {}
        from_disk: set[int] = set()
        for i, key in enumerate(keys):
            entry = self._memory.get(key)
            if entry is None and self.directory is not None:
                entry = store.load_entry(store.entry_path(self.directory, key), key, self._weights.digest)
                if entry is not None:
                    from_disk.add(i)
            if entry is not None:
                if prints is not None:
                    self._check_input(key, entry, x, prints[i])
                found[i] = entry
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        for i in found:
            if i in from_disk:
                self._remember(keys[i], found[i])
            else:
                self._memory.move_to_end(keys[i])
        if missing:
            index = torch.tensor(missing, device=x.device)
            with torch.inference_mode():
                out = self.backbone(x if len(missing) == len(keys) else x.index_select(0, index))
            kind, leaves = _flatten(out, len(missing))
            for j, i in enumerate(missing):
                entry = Entry(kind, [leaf[j].clone() for leaf in leaves])  # clone: a normal tensor of its own
                if prints is not None:
                    entry.inputs, entry.input_shape = prints[i], tuple(x.shape[1:])
                found[i] = entry
                self._put(keys[i], entry)
        kinds = {found[i].kind for i in found}
        if len(kinds) > 1:
            raise FreezableError(f"cached outputs of different kinds {sorted(kinds)}; was the backbone changed? "
                                 "call cache.clear(disk=True)")
        n_leaves = len(found[0].tensors)
        stacked = [torch.stack([found[i].tensors[leaf] for i in range(len(keys))]) for leaf in range(n_leaves)]
        return _unflatten(kinds.pop(), stacked)

    @staticmethod
    def _check_input(key: Hashable, entry: Entry, x: torch.Tensor, now: torch.Tensor) -> None:
        if entry.inputs is None:  # filled without verify_inputs: record this input from now on
            entry.inputs, entry.input_shape = now, tuple(x.shape[1:])
            return
        if entry.input_shape != tuple(x.shape[1:]) or not same_input(entry.inputs, now):
            shapes = "" if entry.input_shape == tuple(x.shape[1:]) else (
                f" (shape {list(entry.input_shape or ())}, now {list(x.shape[1:])})")
            raise FreezableError(
                f"FeatureCache key {key!r} was cached for another input{shapes}: the same key must always come "
                "with the same input tensor. Random augmentation (random crops, flips, color jitter) is the "
                "likely cause: turn it off for cached features, or don't cache"
            )

    @staticmethod
    def _keys(keys: Sequence[Any] | torch.Tensor, batch: int) -> list[Hashable]:
        if isinstance(keys, torch.Tensor):
            if keys.dim() != 1 or keys.is_floating_point():
                raise FreezableError(f"tensor keys must be a 1-d integer tensor, got shape {tuple(keys.shape)} "
                                     f"and dtype {keys.dtype}")
            keys = keys.tolist()
        elif isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise type_error("keys", keys, "a sequence with one key per sample")
        if len(keys) != batch:
            raise FreezableError(f"got {len(keys)} keys for a batch of {batch} samples; pass one key per sample")
        return [_key(k) for k in keys]

    def _put(self, key: Hashable, entry: Entry) -> None:
        if self.directory is not None:
            store.save_entry(store.entry_path(self.directory, key), key, self._weights.digest, entry)
        self._remember(key, entry)

    def _remember(self, key: Hashable, entry: Entry) -> None:
        size = entry.nbytes
        if self.max_bytes is not None and size > self.max_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._memory[key] = entry
        self.nbytes += size
        while (self.max_items is not None and len(self._memory) > self.max_items) or (
            self.max_bytes is not None and self.nbytes > self.max_bytes
        ):
            _, evicted = self._memory.popitem(last=False)  # least recently used
            self.nbytes -= evicted.nbytes


def _describe(backbone: nn.Module) -> str:
    """The backbone's class for the manifest and messages: ``FrozenBackbone(ResNet)``."""
    inner = getattr(backbone, "backbone", None)
    name = type(backbone).__name__
    return f"{name}({type(inner).__name__})" if isinstance(inner, nn.Module) else name


def _flatten(out: Any, batch: int) -> tuple[str, list[torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        leaves, kind = [out], "tensor"
    elif isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) for t in out):
        leaves, kind = list(out), type(out).__name__
    else:
        raise type_error("the backbone's output", out, "a tensor or a list/tuple of tensors",
                         "FeatureCache caches only those")
    for leaf in leaves:
        if leaf.dim() == 0 or leaf.shape[0] != batch:
            raise FreezableError(f"the backbone returned shape {tuple(leaf.shape)} for a batch of {batch}; "
                                 "FeatureCache needs the batch as first dimension")
    return kind, leaves


def _unflatten(kind: str, leaves: list[torch.Tensor]) -> Any:
    if kind == "tensor":
        return leaves[0]
    return tuple(leaves) if kind == "tuple" else list(leaves)
