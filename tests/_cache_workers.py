"""Processes for tests/test_cache.py's fault injection: ``python tests/_cache_workers.py MODE DIRECTORY``.

``killed``: a FeatureCache whose first file write stops at half its bytes and kills the process
(SIGKILL, as the OOM killer or a preempted job does). ``share``: rounds of a FeatureCache over a
directory that another process (the test itself) uses at the same time, deleting a few files each round so that
both keep rewriting them; every output is checked against the backbone's own, and any warning (a
file read half-written) is an error. Prints ``ready`` before its rounds and ``ok`` after.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

import freezable as fz
from freezable.cache.store import entry_path

ROUNDS = 60
WIDTH = 16384  # 64 KiB per sample on disk: long enough writes for a reader to catch one half-done


def make_backbone() -> fz.FrozenBackbone:
    torch.manual_seed(0)  # the same weights in every process
    return fz.FrozenBackbone(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, WIDTH)))


def make_data(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1))


def killed(directory: str) -> None:
    real_save = torch.save

    def half_save(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = half_save
    fz.FeatureCache(make_backbone(), directory=directory)(make_data()[:3], keys=[0, 1, 2])
    print("not killed")


def share(directory: str, seed: str) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two processes on a few cores: thread pools fighting make small ops slow
    try:
        _share(directory, seed)
    finally:
        torch.set_num_threads(threads)


def _share(directory: str, seed: str) -> None:
    warnings.simplefilter("error")
    rng = random.Random(int(seed))
    backbone, data = make_backbone(), make_data()
    with torch.no_grad():
        own = backbone.backbone(data)
    print("ready", flush=True)
    for _ in range(ROUNDS):
        cache = fz.FeatureCache(backbone, directory=directory, max_items=1)
        order = list(range(len(data)))
        rng.shuffle(order)
        for start in range(0, len(order), 3):
            keys = order[start:start + 3]
            out = cache(data[keys], keys=keys)
            assert torch.allclose(out, own[keys], rtol=1e-5, atol=1e-6), f"wrong features for keys {keys}"
        for key in rng.sample(range(len(data)), 4):
            entry_path(Path(directory), key).unlink(missing_ok=True)  # someone must write it again
    print("ok")


if __name__ == "__main__":
    {"killed": killed, "share": share}[sys.argv[1]](*sys.argv[2:])
