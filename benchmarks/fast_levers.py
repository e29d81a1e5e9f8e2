"""What each lever of ``FrozenBackbone(fast=True)`` is worth: the fast path with one lever at a time.

Variants (all a frozen backbone plus a trained linear head, interleaved like ``throughput.py``):

* ``freezable``: the plain path (eval mode, ``torch.inference_mode()``, output cloned);
* ``fold``: BatchNorm folded into the convolutions, contiguous layout (the shadow that
  :func:`freezable.fast.build_fast_path` builds with ``channels_last=False``, run as the wrapper runs it);
* ``channels_last``: channels-last weights and input, nothing folded (the plain path on a backbone
  converted to channels-last, its input converted at each step as the fast path converts it);
* ``fold+channels_last``: both (``FrozenBackbone(fast=True)``, what it builds on CPU and CUDA);
* ``fold+channels_last+bf16``: both, copies stored in bf16 (``fast=True, frozen_dtype=torch.bfloat16``);
* ``floor``: the backbone in eval mode under ``torch.inference_mode()``, then the head's step.

    python benchmarks/fast_levers.py --model resnet50 --img-size 160 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

import freezable as fz  # noqa: E402
from freezable._inference import run_without_autograd  # noqa: E402
from freezable.fast import build_fast_path  # noqa: E402

VARIANTS = ["freezable", "fold", "channels_last", "fold+channels_last", "fold+channels_last+bf16", "floor"]
COLUMNS = ["variant", "step_ms", "samples_per_sec", "x_floor", "folded"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--results-file", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.plot = None
    common.check_output_suffix(parser, args)
    args.device = common.resolve_device(args.device)
    return args


def builder(args: argparse.Namespace, variant: str) -> tuple[common.Step, int]:
    torch.manual_seed(0)
    device = args.device
    backbone, width = common.build_backbone(args.model, args.img_size)
    backbone.to(device)
    head = nn.Linear(width, 1000).to(device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    optimizer = common.make_optimizer(list(head.parameters()))
    features, folded = FEATURES[variant](backbone, x)

    def step() -> None:
        loss = F.cross_entropy(head(features()), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, folded


def _floor(backbone: nn.Module, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor], int]:
    backbone.eval().requires_grad_(False)

    def features() -> torch.Tensor:
        with torch.inference_mode():
            out = backbone(x)
        return out.clone()
    return features, 0


def _wrapper(backbone: nn.Module, x: torch.Tensor, **options: Any) -> tuple[Callable[[], torch.Tensor], int]:
    """``FrozenBackbone(backbone, **options)``; with ``fast``, the pairs its shadow folds (counted on a twin build)."""
    fb = fz.FrozenBackbone(backbone, **options)
    folded = 0
    if fb.fast:
        folded = len(build_fast_path(fb.backbone, (x,), {}, dtype=fb.frozen_dtype, channels_last=True).folded)
    return lambda: fb(x), folded


def _fold_only(backbone: nn.Module, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor], int]:
    """The fast path's shadow without channels-last, run as FrozenBackbone runs a fully frozen one.

    ``fast=True`` always takes channels-last on CPU and CUDA, so this builds the shadow itself with
    :func:`freezable.fast.build_fast_path`; it skips the wrapper's per-call checks (a pass over flags).
    """
    fb = fz.FrozenBackbone(backbone)  # freezes and holds the backbone: what the shadow copies
    path = build_fast_path(fb.backbone, (x,), {}, channels_last=False)

    return lambda: run_without_autograd(path.module, (x,), {}), len(path.folded)


def _channels_last_only(backbone: nn.Module, x: torch.Tensor) -> tuple[Callable[[], torch.Tensor], int]:
    """The plain path on a channels-last backbone: the layout lever without folding."""
    fb = fz.FrozenBackbone(backbone.to(memory_format=torch.channels_last))
    return lambda: fb(x.contiguous(memory_format=torch.channels_last)), 0


FEATURES = {  # variant -> (backbone, input) -> (features of the input, conv-BatchNorm pairs folded)
    "freezable": _wrapper,
    "fold": _fold_only,
    "channels_last": _channels_last_only,
    "fold+channels_last": lambda b, x: _wrapper(b, x, fast=True),
    "fold+channels_last+bf16": lambda b, x: _wrapper(b, x, fast=True, frozen_dtype=torch.bfloat16),
    "floor": _floor,
}


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    built = {v: builder(args, v) for v in VARIANTS}
    times = common.time_interleaved({v: s for v, (s, _) in built.items()}, args.device, args.warmup, args.steps,
                                    not args.no_progress)
    rows = [{"variant": v, **common.summarise(times[v], args.batch_size), "folded": built[v][1]} for v in VARIANTS]
    floor = next(r for r in rows if r["variant"] == "floor")["step_ms"]
    for r in rows:
        r["x_floor"] = round(r["step_ms"] / floor, 3)
    meta = {"benchmark": "fast_levers", "model": args.model, "batch_size": args.batch_size,
            "img_size": args.img_size, **common.environment(args.device, "fp32"),
            "command": "python benchmarks/fast_levers.py " + " ".join(argv)}
    common.report(f"{args.model}  batch {args.batch_size}  {args.img_size} px", meta, rows, COLUMNS,
                  args.results_file)
    return meta, rows


if __name__ == "__main__":
    main()
