"""Linear probing with ``fz.FeatureCache``: epochs after the first cost only the head's step.

A frozen backbone (default ResNet-50, random weights, 160 px) and a trained linear head on a small
synthetic dataset without augmentation. Rows, each an epoch's median time:

* ``freezable``: every epoch runs ``fz.FrozenBackbone(backbone)`` then the head's step (no cache);
* ``freezable_fast``: the same with ``fast=True``;
* ``cache_epoch1``: the first epoch through ``fz.FeatureCache`` (every sample a miss);
* ``cache_epoch2+``: the later epochs (every sample a hit: only the head trains).

With ``--checks``, instead, the cost of the cache's guarantees for one batch, each a row with its
median milliseconds and its share of the backbone's forward: the forward alone; a batch of misses
and a batch of hits, with and without ``verify_inputs``; the per-call weights check (version
counters and identities); the input fingerprint; the full weights fingerprint (at construction, when
a directory is opened, and when the per-call check moved); and building a cache on a directory.

    python benchmarks/feature_cache.py
    python benchmarks/feature_cache.py --cache-dir /tmp/features --results-file cache.json
    python benchmarks/feature_cache.py --checks --batch-size 64 --img-size 224 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

import freezable as fz  # noqa: E402
from freezable.cache.binding import WeightsWatch, input_prints, weights_fingerprint  # noqa: E402

COLUMNS = ["mode", "epoch_ms", "samples_per_sec", "speedup_vs_uncached"]
CHECK_COLUMNS = ["case", "batch_ms", "pct_of_forward"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="timm or torchvision name")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=4, help="cached epochs (the first fills the cache)")
    parser.add_argument("--uncached-epochs", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--cache-dir", default=None, help="also keep features on disk here")
    parser.add_argument("--results-file", default=None, help="write results to X.json or X.csv")
    parser.add_argument("--checks", action="store_true", help="time the guarantees' checks for one batch instead")
    parser.add_argument("--repeats", type=int, default=3, help="--checks: timed repeats of each forward-sized case")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("num_samples", "batch_size", "img_size", "uncached_epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first fills the cache), got {args.epochs}")
    args.plot = None
    common.check_output_suffix(parser, args)
    args.device = common.resolve_device(args.device)
    return args


def run_epoch(features: Any, head: nn.Module, optimizer: torch.optim.Optimizer, data: torch.Tensor,
              labels: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """One epoch; ``features(x, keys)`` gives the backbone's output. Returns milliseconds."""
    common.synchronize(device)
    start = time.perf_counter()
    for first in range(0, len(data), batch_size):
        keys = list(range(first, min(first + batch_size, len(data))))
        x, y = data[first:first + len(keys)], labels[first:first + len(keys)]
        loss = F.cross_entropy(head(features(x, keys)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    common.synchronize(device)
    return (time.perf_counter() - start) * 1000


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    device = args.device
    backbone, width = common.build_backbone(args.model, args.img_size)
    backbone.to(device)
    data = torch.randn(args.num_samples, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.num_classes, (args.num_samples,), device=device)
    plain = fz.FrozenBackbone(backbone)
    fast = fz.FrozenBackbone(backbone, fast=True)  # another view of the same weights
    head = nn.Linear(width, args.num_classes).to(device)
    optimizer = common.make_optimizer(list(head.parameters()))
    cache = fz.FeatureCache(plain, directory=args.cache_dir)
    runs: dict[str, tuple[Any, int]] = {
        "freezable": (lambda x, keys: plain(x), args.uncached_epochs),
        "freezable_fast": (lambda x, keys: fast(x), args.uncached_epochs),
        "cache": (cache, args.epochs),
    }
    with torch.no_grad():  # warm-up: allocator, kernels, the fast path's build
        plain(data[: args.batch_size])
        fast(data[: args.batch_size])
    times: dict[str, list[float]] = {}
    total = sum(n for _, n in runs.values())
    with tqdm(total=total, desc="epochs", disable=args.no_progress, leave=False, file=sys.stderr) as bar:
        for name, (features, epochs) in runs.items():
            for epoch in range(epochs):
                key = name if name != "cache" else ("cache_epoch1" if epoch == 0 else "cache_epoch2+")
                times.setdefault(key, []).append(run_epoch(features, head, optimizer, data, labels,
                                                           args.batch_size, device))
                bar.update()
    uncached = statistics.median(times["freezable"])
    rows = []
    for mode, ms in times.items():
        epoch_ms = statistics.median(ms)
        rows.append({
            "mode": mode,
            "epoch_ms": round(epoch_ms, 2),
            "samples_per_sec": round(args.num_samples * 1000 / epoch_ms, 1),
            "speedup_vs_uncached": round(uncached / epoch_ms, 2),
        })
    meta = {
        "benchmark": "feature_cache",
        "model": args.model,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "epochs": args.epochs,
        "cache": repr(cache),
        **common.environment(device, "fp32"),
        "command": "python benchmarks/feature_cache.py " + " ".join(argv),
    }
    return meta, rows


def measure_checks(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cost of the cache's checks for one batch of ``--batch-size`` (medians, milliseconds)."""
    torch.manual_seed(args.seed)
    device, n, r = args.device, args.batch_size, args.repeats
    backbone, _ = common.build_backbone(args.model, args.img_size)
    fb = fz.FrozenBackbone(backbone.to(device))
    x = torch.randn(n, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode():
        fb(x)  # warm-up
    fresh = iter(range(10**9))

    def misses(cache: fz.FeatureCache) -> Callable[[], Any]:
        return lambda: cache(x, keys=[next(fresh) for _ in range(n)])  # new keys: every sample a miss

    plain, verified = fz.FeatureCache(fb), fz.FeatureCache(fb, verify_inputs=True)
    plain(x, keys=list(range(n)))
    verified(x, keys=list(range(n)))
    watch = WeightsWatch(fb)

    def forward() -> None:
        with torch.inference_mode():
            fb(x)

    with tempfile.TemporaryDirectory() as directory:
        fz.FeatureCache(fb, directory=directory)  # writes the manifest: later ones open and check it
        cases = {
            "forward (no cache)": common.median_ms(forward, r, device),
            "cache, all misses": common.median_ms(misses(plain), r, device),
            "cache, all misses, verify_inputs": common.median_ms(misses(verified), r, device),
            "cache, all hits": common.median_ms(lambda: plain(x, keys=list(range(n))), 20 * r, device),
            "cache, all hits, verify_inputs": common.median_ms(lambda: verified(x, keys=list(range(n))), 20 * r, device),
            "per-call weights check": common.median_ms(watch.moved, 100 * r, device),
            "input fingerprint (verify_inputs)": common.median_ms(lambda: input_prints(x), 5 * r, device),
            "weights fingerprint (full)": common.median_ms(lambda: weights_fingerprint(fb), r, device),
            "open a cache directory": common.median_ms(lambda: fz.FeatureCache(fb, directory=directory), r, device),
        }
    forward_ms = cases["forward (no cache)"]
    rows = [{"case": case, "batch_ms": round(ms, 3), "pct_of_forward": round(100 * ms / forward_ms, 3)}
            for case, ms in cases.items()]
    meta = {
        "benchmark": "feature_cache_checks",
        "model": args.model,
        "batch_size": n,
        "img_size": args.img_size,
        "repeats": r,
        "parameters": sum(p.numel() for p in fb.parameters()),
        **common.environment(device, "fp32"),
        "command": "python benchmarks/feature_cache.py " + " ".join(argv),
    }
    return meta, rows


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.checks:
        meta, rows = measure_checks(args, argv)
        common.report(f"{meta['model']} FeatureCache checks: batch {meta['batch_size']}, {meta['img_size']} px",
                      meta, rows, CHECK_COLUMNS, args.results_file)
        return meta, rows
    meta, rows = measure(args, argv)
    common.report(f"{meta['model']} linear probe: {meta['num_samples']} samples, batch {meta['batch_size']}, "
                  f"{meta['img_size']} px", meta, rows, COLUMNS, args.results_file)
    return meta, rows


if __name__ == "__main__":
    main()
