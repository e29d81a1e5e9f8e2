"""Training throughput of a frozen backbone with a trained linear head, six ways, side by side.

Modes (a backbone with its classifier removed, then ``nn.Linear(num_features, 1000)`` as the head):

* ``full``: everything trains (the baseline);
* ``naive``: ``requires_grad=False`` on the backbone, BatchNorm left in training mode;
* ``timm_freeze``: ``timm.utils.model.freeze`` on the backbone (BatchNorm made FrozenBatchNorm2d);
* ``freezable``: ``nn.Sequential(fz.FrozenBackbone(backbone), head)``;
* ``freezable_fast``: the same with ``fz.FrozenBackbone(backbone, fast=True)``;
* ``floor``: the backbone in eval mode under ``torch.inference_mode()``, then the head's training step.

For each mode: median ``step_ms``, ``samples_per_sec``, ``peak_mem_mb``, ``x_floor`` (step time over the
floor's), ``mem_x_floor`` and ``speedup_vs_full``. Defaults: resnet18, 128 px, batch 16, fp32 on the
CPU (about a minute on two cores); resnet50, 224 px, batch 128, bf16 autocast on CUDA
(add ``--channels-last`` for the tensor-core layout).

    python benchmarks/throughput.py
    python benchmarks/throughput.py --model resnet50 --img-size 160 --batch-size 16 --results-file r.json --plot r.png
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

import freezable as fz  # noqa: E402

MODES = ("full", "naive", "timm_freeze", "freezable", "freezable_fast", "floor")
NUM_CLASSES = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="timm or torchvision name (default: resnet18 on CPU, "
                                                      "resnet50 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on CUDA")
    parser.add_argument("--img-size", type=int, default=None, help="default: 128 on CPU, 224 on CUDA")
    parser.add_argument("--modes", nargs="+", default=list(MODES), metavar="MODE",
                        help=f"any of {', '.join(MODES)} (default: all)")
    parser.add_argument("--frozen-dtype", default="none", choices=["none", "bf16", "fp16"],
                        help="freezable_fast: store frozen weights in this dtype")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    modes = []
    for mode in args.modes:
        for m in mode.split(","):
            if m not in MODES:
                parser.error(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
            if m not in modes:
                modes.append(m)
    args.modes = modes
    common.check_output_suffix(parser, args)
    for name in ("batch_size", "img_size", "warmup", "steps"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    device = common.resolve_device(args.device)
    cuda = device.type == "cuda"
    args.device = device
    args.precision = args.precision or ("bf16" if args.device.type == "cuda" else "fp32")
    args.model = args.model or ("resnet50" if cuda else "resnet18")
    args.batch_size = args.batch_size or (128 if cuda else 16)
    args.img_size = args.img_size or (224 if cuda else 128)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 8)
    return args


def builder(args: argparse.Namespace, mode: str) -> common.Builder:
    """Builds ``mode``'s model, data and optimizer; returns its training step."""

    def build() -> common.Step:
        torch.manual_seed(args.seed)
        device = args.device
        backbone, width = common.build_backbone(args.model, args.img_size)
        head = nn.Linear(width, NUM_CLASSES)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        if mode == "naive":
            backbone.requires_grad_(False)
        elif mode == "timm_freeze":
            from timm.utils.model import freeze

            freeze(backbone)
        elif mode == "freezable":
            backbone = fz.FrozenBackbone(backbone)
        elif mode == "freezable_fast":
            dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.frozen_dtype]
            backbone = fz.FrozenBackbone(backbone, fast=True, frozen_dtype=dtype)
        elif mode == "floor":
            backbone.requires_grad_(False).eval()
        backbone.to(device, memory_format=fmt)
        head.to(device)
        if mode != "floor":
            backbone.train()
        params = [p for m in (backbone, head) for p in m.parameters() if p.requires_grad]
        optimizer = common.make_optimizer(params)
        run_backbone = torch.compile(backbone) if args.compile else backbone
        run_head = torch.compile(head) if args.compile else head

        def step() -> None:
            with common.autocast(device, args.precision):
                if mode == "floor":
                    with torch.inference_mode():
                        features = run_backbone(x)
                    features = features.clone()  # a normal tensor the head can save for backward
                else:
                    features = run_backbone(x)
                loss = F.cross_entropy(run_head(features).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return build


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    builders = {mode: builder(args, mode) for mode in args.modes}
    progress = not args.no_progress
    steps = {}
    for i, (mode, build) in enumerate(builders.items(), 1):
        common.phase(f"[1/3] building {mode} ({i}/{len(builders)})", progress)
        steps[mode] = build()
    common.phase(f"[2/3] timing {args.warmup} warm-up and {args.steps} timed rounds of every mode", progress)
    times = common.time_interleaved(steps, args.device, args.warmup, args.steps, progress)
    del steps
    memory: dict[str, float | None] = {}
    for i, (mode, build) in enumerate(builders.items(), 1):
        if args.no_memory:
            memory[mode] = None
            continue
        how = "a fresh process per mode" if args.device.type != "cuda" else "on the device"
        common.phase(f"[3/3] peak memory of {mode} ({i}/{len(builders)}, {how})", progress)
        if args.device.type == "cuda":
            memory[mode] = common.peak_memory_cuda(build, args.device)
        else:
            memory[mode] = common.peak_memory_cpu(__file__, argv, mode)
    rows = []
    for mode in args.modes:
        row: dict[str, Any] = {"mode": mode, **common.summarise(times[mode], args.batch_size)}
        row["peak_mem_mb"] = None if memory[mode] is None else round(memory[mode], 1)
        rows.append(row)
    by_mode = {row["mode"]: row for row in rows}
    for row in rows:
        floor, full = by_mode.get("floor"), by_mode.get("full")
        row["x_floor"] = round(row["step_ms"] / floor["step_ms"], 3) if floor else None
        row["mem_x_floor"] = (round(row["peak_mem_mb"] / floor["peak_mem_mb"], 3)
                              if floor and row["peak_mem_mb"] and floor["peak_mem_mb"] else None)
        row["speedup_vs_full"] = round(full["step_ms"] / row["step_ms"], 3) if full else None
    meta = {
        "benchmark": "throughput",
        "model": args.model,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "frozen_dtype": args.frozen_dtype,
        "warmup": args.warmup,
        "steps": args.steps,
        "peak_mem": ("not measured" if args.no_memory else
                     "torch.cuda.max_memory_allocated" if args.device.type == "cuda" else
                     "peak RSS of a subprocess per mode, above its RSS before the model is built"),
        **common.environment(args.device, args.precision),
        "command": "python benchmarks/throughput.py " + " ".join(argv),
    }
    return meta, rows


COLUMNS = ["mode", "step_ms", "spread_pct", "samples_per_sec", "peak_mem_mb", "x_floor", "mem_x_floor",
           "speedup_vs_full"]


def reading(rows: list[dict[str, Any]]) -> str:
    """The table in plain words: what the ratios mean, which mode to use, and whether the steps varied too much to say.

    The floor is the least the *unchanged* computation costs: the same backbone at inference (eval mode, no
    autograd), then the head's training step. ``freezable_fast`` changes the computation (BatchNorm folded into
    the convolutions, channels-last), so it may run below the floor; the other modes cannot, beyond noise. The
    noise warning fires on the spread of the steps alone.

    Example:
        >>> rows = [{"mode": "floor", "step_ms": 10.0, "spread_pct": 2.0, "x_floor": 1.0, "speedup_vs_full": 3.0},
        ...         {"mode": "freezable", "step_ms": 10.5, "spread_pct": 3.0, "x_floor": 1.05, "speedup_vs_full": 2.9},
        ...         {"mode": "freezable_fast", "step_ms": 7.0, "spread_pct": 4.0, "x_floor": 0.7, "speedup_vs_full": 4.3}]
        >>> print(reading(rows))
        How to read it: x_floor is a mode's step time over the floor's. The floor is the least the unchanged
        computation costs: the backbone at inference (eval mode, no autograd), then the head's training step.
        speedup_vs_full is how much faster than training everything. freezable costs 1.05x the floor.
        freezable_fast changes the computation (BatchNorm folded into the convolutions, channels-last, outputs equal
        up to float rounding), so it can beat the floor: 0.70x here. Use freezable_fast.
        >>> rows[1]["spread_pct"] = 25.0
        >>> print(reading(rows).splitlines()[-2])
        WARNING: steps varied by up to 25% (interquartile range over median), so ratios less than 25% apart are not
    """
    by_mode = {r["mode"]: r for r in rows}
    lines = ["How to read it: x_floor is a mode's step time over the floor's. The floor is the least the unchanged "
             "computation costs: the backbone at inference (eval mode, no autograd), then the head's training step. "
             "speedup_vs_full is how much faster than training everything."]
    plain, fast = by_mode.get("freezable"), by_mode.get("freezable_fast")
    if plain and plain.get("x_floor"):
        lines[-1] += f" freezable costs {plain['x_floor']:.2f}x the floor."
    if fast and fast.get("x_floor"):
        lines[-1] += (" freezable_fast changes the computation (BatchNorm folded into the convolutions, channels-last, "
                      f"outputs equal up to float rounding), so it can beat the floor: {fast['x_floor']:.2f}x here.")
    ours = [r for r in (plain, fast) if r and r.get("step_ms")]
    if ours:
        lines[-1] += f" Use {min(ours, key=lambda r: r['step_ms'])['mode']}."
    spread = max((r.get("spread_pct") or 0.0) for r in rows)
    if spread > 10:
        lines.append(f"WARNING: steps varied by up to {spread:.0f}% (interquartile range over median), so ratios less "
                     f"than {spread:.0f}% apart are not different. Rerun on an idle machine, or with more --steps.")
    return "\n".join(textwrap.fill(line, 110) for line in lines)


def plot(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["mode"] for r in rows]
    axes[0].bar(names, [r["step_ms"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("median step (ms)")
    axes[1].bar(names, [r["peak_mem_mb"] or 0 for r in rows], color="tab:orange")
    axes[1].set_ylabel("peak memory (MB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    common.save_figure(fig, path, f"{meta['model']}, batch {meta['batch_size']}, {meta['img_size']} px, "
                       f"{meta['dtype']}", meta)


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        common.run_memory_child(builder(args, args.memory_child))
        return None
    torch.manual_seed(args.seed)
    meta, rows = measure(args, argv)
    common.report(f"{meta['model']}  batch {meta['batch_size']}  {meta['img_size']} px  {meta['dtype']}  "
                  f"channels_last={meta['channels_last']}  compile={meta['compile']}",
                  meta, rows, COLUMNS, args.results_file, plot, args.plot)
    print()
    print(reading(rows))
    return meta, rows


if __name__ == "__main__":
    main()
