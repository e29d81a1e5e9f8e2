"""What the per-forward staleness check of ``FrozenBackbone(fast=True)`` costs, beside the forward itself.

Every forward of the fast path first asks whether the shadow is stale (:meth:`freezable.fast.FastPath.is_stale`):
one identity comparison per submodule of the backbone and per parameter and buffer of a held part (a
replaced object: ``load_state_dict(assign=True)``, ``conv.weight = nn.Parameter(...)``, a swapped module),
and one version comparison per tensor a copy was derived from (an in-place write). Rows (medians):

* ``fast forward``: ``fb(x)`` on a fully frozen backbone (inference mode, output cloned);
* ``staleness check``: ``is_stale()`` alone, what each forward pays;
* ``version part only``: the version comparisons alone (the check before identities were compared).

    python benchmarks/fast_path_staleness.py --model resnet50 --img-size 224 --batch-size 1 --device cpu
"""

from __future__ import annotations

import argparse
import operator
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

import freezable as fz  # noqa: E402

COLUMNS = ["case", "call_us", "pct_of_forward"]
_VERSION = operator.attrgetter("_version")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards (the checks: 100 times as many)")
    parser.add_argument("--results-file", default=None)
    args = parser.parse_args(argv)
    args.plot = None
    common.check_output_suffix(parser, args)
    args.device = common.resolve_device(args.device)
    return args


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    torch.manual_seed(0)
    device = args.device
    backbone, _ = common.build_backbone(args.model, args.img_size)
    fb = fz.FrozenBackbone(backbone.to(device), fast=True)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    for _ in range(2):
        fb(x)  # builds the fast path, then warms it up
    path = fb._fast_path
    r = args.repeats
    cases = {  # in microseconds
        "fast forward": 1000 * common.median_ms(lambda: fb(x), r, device),
        "staleness check": 1000 * common.median_ms(path.is_stale, 100 * r, device),
        "version part only": 1000 * common.median_ms(
            lambda: any(map(operator.ne, map(_VERSION, path._tensors), path._versions)), 100 * r, device),
    }
    forward_us = cases["fast forward"]
    rows = [{"case": case, "call_us": round(us, 2), "pct_of_forward": round(100 * us / forward_us, 3)}
            for case, us in cases.items()]
    meta = {
        "benchmark": "fast_path_staleness",
        "model": args.model,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "repeats": r,
        "identity_comparisons": len(path.slots),
        "version_comparisons": len(path.sources),
        **common.environment(device, "fp32"),
        "command": "python benchmarks/fast_path_staleness.py " + " ".join(argv),
    }
    return meta, rows


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    meta, rows = measure(args, argv)
    common.report(f"{meta['model']} fast path staleness check: batch {meta['batch_size']}, {meta['img_size']} px; "
                  f"{meta['identity_comparisons']} identity and {meta['version_comparisons']} version comparisons",
                  meta, rows, COLUMNS, args.results_file)
    return meta, rows


if __name__ == "__main__":
    main()
