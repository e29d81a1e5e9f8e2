"""The directory format of :class:`~freezable.FeatureCache`: written atomically, read defensively.

A directory holds a manifest, ``freezable_cache.json`` (which weights the features belong to), and
one ``<hash of the key>.pt`` file per sample (``torch.save`` of plain data, read back with
``weights_only=True``): the sample's key, the weights fingerprint, the output's tensors and, where
the cache verifies inputs, a fingerprint of the input.

Atomic: a file gets its final name only by ``os.replace`` of a complete temporary file
(``.tmp-*``) in the same directory, so a reader in this process, a later one or another rank sees
the whole old file, the whole new one, or none; never a part. A writer killed half-way leaves a
temporary file behind, which nothing reads (``FeatureCache.clear(disk=True)`` removes it).

Defensive: a file that is not a complete entry of the key asked for and the weights in use
(truncated, corrupt, written by something else, another key, other weights) is reported in one
warning naming it and treated as absent; the cache recomputes the entry and replaces the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["Entry", "MANIFEST", "entry_path", "save_entry", "load_entry", "read_manifest", "write_manifest",
           "remove_entries"]

MANIFEST = "freezable_cache.json"
_FORMAT = "freezable.feature_cache"
_VERSION = 2  # version 1 (freezable <= 0.3) had no weights fingerprint: its files are misses
_MANIFEST_FORMAT = "freezable.feature_cache.manifest"
_TMP = ".tmp-"
_KINDS = ("tensor", "tuple", "list")


@dataclass
class Entry:
    """One sample's cached output."""

    kind: str  # "tensor", "tuple" or "list": how the backbone returned its output
    tensors: list[torch.Tensor]  # the output's tensors for this sample (no batch dimension)
    inputs: torch.Tensor | None = None  # the input's fingerprint (float64), where the cache verifies inputs
    input_shape: tuple[int, ...] | None = None  # the input's shape (no batch dimension), beside ``inputs``

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def entry_path(directory: Path, key: object) -> Path:
    """The file of ``key``'s entry: a hash of its ``repr`` (any str or int key gives a safe name)."""
    return directory / (hashlib.sha256(repr(key).encode()).hexdigest()[:40] + ".pt")


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> bool:
    """Writes ``path`` through a temporary file beside it and ``os.replace``; False (and a warning) on OSError."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP}{path.name}-")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        return True
    except OSError as e:  # a full disk, a read-only or vanished directory: the entry stays in memory only
        warnings.warn(f"FeatureCache could not write to {path.parent}: {e}; the features stay in memory only",
                      stacklevel=4)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_entry(path: Path, key: object, weights: str, entry: Entry) -> bool:
    """Writes ``entry`` for ``key`` and ``weights`` atomically; False (and a warning) if the disk refused."""
    data = {
        "format": _FORMAT,
        "version": _VERSION,
        "key": repr(key),
        "weights": weights,
        "kind": entry.kind,
        "tensors": [t.detach().cpu() for t in entry.tensors],
        "inputs": None if entry.inputs is None else entry.inputs.cpu(),
        "input_shape": None if entry.input_shape is None else list(entry.input_shape),
    }
    return _write_atomic(path, lambda f: torch.save(data, f))


def load_entry(path: Path, key: object, weights: str) -> Entry | None:
    """The entry in ``path`` if it is a complete one of ``key`` for ``weights``; else None, with a warning."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated, corrupt or foreign bytes: torch raises RuntimeError, UnpicklingError, ...
        return _miss(path, f"it cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    problem = _problem(data, key, weights)
    if problem:
        return _miss(path, problem)
    shape = data["input_shape"]
    return Entry(data["kind"], list(data["tensors"]), data["inputs"], None if shape is None else tuple(shape))


def _problem(data: Any, key: object, weights: str) -> str | None:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return "it is not a FeatureCache entry"
    if data.get("version") != _VERSION:
        return f"it is of format version {data.get('version')!r}, not {_VERSION}"
    if data.get("key") != repr(key):
        return f"it holds key {data.get('key')}, not {key!r}"
    if data.get("weights") != weights:
        return f"it was computed with other weights (fingerprint {str(data.get('weights'))[:12]}...)"
    tensors, inputs, shape = data.get("tensors"), data.get("inputs"), data.get("input_shape")
    if (data.get("kind") not in _KINDS or not isinstance(tensors, list) or not tensors
            or not all(isinstance(t, torch.Tensor) for t in tensors)
            or not (inputs is None or isinstance(inputs, torch.Tensor))
            or not (shape is None or isinstance(shape, list))):
        return "its fields are malformed"
    return None


def _miss(path: Path, why: str) -> None:
    warnings.warn(f"FeatureCache ignores {path}: {why}; recomputing that sample and replacing the file",
                  stacklevel=4)
    return None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The directory's manifest, or None if it has none (or an unreadable one: then with a warning)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.warn(f"FeatureCache ignores {path}: it cannot be read ({e}); writing a new one", stacklevel=3)
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        warnings.warn(f"FeatureCache ignores {path}: it is not a FeatureCache manifest; writing a new one",
                      stacklevel=3)
        return None
    return manifest


def write_manifest(directory: Path, weights: str, backbone: str) -> None:
    """Records (atomically) that the directory's entries belong to ``weights`` of ``backbone``."""
    manifest = {"format": _MANIFEST_FORMAT, "version": 1, "weights": weights, "backbone": backbone,
                "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    text = json.dumps(manifest, indent=1).encode()
    _write_atomic(directory / MANIFEST, lambda f: f.write(text))


def remove_entries(directory: Path) -> None:
    """Deletes every entry file and leftover temporary file (the manifest stays)."""
    for path in [*directory.glob("*.pt"), *directory.glob(f"{_TMP}*")]:
        try:
            path.unlink()
        except FileNotFoundError:  # another process removed it first
            pass
