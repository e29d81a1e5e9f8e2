"""Step time and peak memory against how much of the network is frozen, for a CNN and a ViT.

Frozen prefixes from the detected groups: nothing, ``stem``, ``stem..stage1``, ..., the whole
``backbone`` (the head always trains); then a contrasting row that freezes one middle stage
only. Freezing a prefix saves backward work (no gradient flows into it, no activations are kept
for it); freezing a middle stage saves only its weight gradients, since the gradient must still
flow through it to the stages before it.

    python benchmarks/freeze_depth.py
    python benchmarks/freeze_depth.py --models resnet50 vit_small_patch16_224 --plot depth.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

import freezable as fz  # noqa: E402

NUM_CLASSES = 1000
COLUMNS = ["model", "frozen", "frozen_pct", "step_ms", "samples_per_sec", "peak_mem_mb", "speedup_vs_nothing"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="timm or torchvision names (default: resnet18 and vit_tiny_patch16_224 on CPU, "
                             "resnet50 and vit_base_patch16_224 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 64 on CUDA")
    parser.add_argument("--img-size", type=int, default=None, help="default: 128 on CPU, 224 on CUDA")
    parser.add_argument("--fast", action="store_true", help="FrozenBackbone(fast=True)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    common.check_output_suffix(parser, args)
    for name in ("batch_size", "img_size", "warmup", "steps"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    args.device = common.resolve_device(args.device)
    args.precision = args.precision or ("bf16" if args.device.type == "cuda" else "fp32")
    cuda = args.device.type == "cuda"
    default_models = ["resnet50", "vit_base_patch16_224"] if cuda else ["resnet18", "vit_tiny_patch16_224"]
    args.models = args.models or default_models
    args.batch_size = args.batch_size or (64 if cuda else 16)
    args.img_size = args.img_size or (224 if cuda else 128)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.steps = args.steps or (10 if cuda else 5)
    return args


def configurations(model_name: str, img_size: int) -> dict[str, list[str]]:
    """Label -> groups to freeze: nothing, the growing prefixes, the whole backbone, one middle stage."""
    from freezable.detect import detect_groups

    with torch.device("meta"):
        model, _ = common.build_backbone(model_name, img_size, num_classes=NUM_CLASSES)
    groups = list(detect_groups(model))
    stages = [g for g in groups if g.startswith("stage")]
    configs: dict[str, list[str]] = {"nothing": []}
    prefix = ["stem"] if "stem" in groups else []
    if prefix:
        configs["stem"] = list(prefix)
    for stage in stages[:-1]:
        prefix.append(stage)
        configs[f"stem..{stage}" if "stem" in groups else f"..{stage}"] = list(prefix)
    if "backbone" in groups:
        configs["backbone"] = ["backbone"]
    if len(stages) >= 3:
        middle = stages[len(stages) // 2]
        configs[f"{middle} only"] = [middle]
    return configs


def builder(args: argparse.Namespace, model_name: str, frozen: list[str]) -> common.Builder:
    def build() -> common.Step:
        torch.manual_seed(args.seed)
        device = args.device
        model, _ = common.build_backbone(model_name, args.img_size, num_classes=NUM_CLASSES)
        fb = fz.FrozenBackbone(model, fast=args.fast).unfreeze()
        if frozen:
            fb.freeze(*frozen)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        fb.to(device, memory_format=fmt).train()
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
        optimizer = common.make_optimizer(list(fb.trainable_parameters()))
        run = torch.compile(fb) if args.compile else fb

        def step() -> None:
            with common.autocast(device, args.precision):
                loss = F.cross_entropy(run(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step.frozen_pct = 100 * (1 - sum(p.numel() for p in fb.trainable_parameters())  # type: ignore[attr-defined]
                                 / sum(p.numel() for p in fb.parameters()))
        return step

    return build


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = []
    for model_name in args.models:
        configs = configurations(model_name, args.img_size)
        builders = {label: builder(args, model_name, groups) for label, groups in configs.items()}
        steps = {label: build() for label, build in builders.items()}
        frozen_pct = {label: round(step.frozen_pct, 1) for label, step in steps.items()}  # type: ignore[attr-defined]
        times = common.time_interleaved(steps, args.device, args.warmup, args.steps, not args.no_progress)
        del steps
        for label, build in builders.items():
            if args.no_memory:
                memory = None
            elif args.device.type == "cuda":
                memory = common.peak_memory_cuda(build, args.device)
            else:
                memory = common.peak_memory_cpu(__file__, argv, f"{model_name}::{label}")
            row = {"model": model_name, "frozen": label, "groups": configs[label], "frozen_pct": frozen_pct[label],
                   **common.summarise(times[label], args.batch_size),
                   "peak_mem_mb": None if memory is None else round(memory, 1)}
            rows.append(row)
        base = next(r for r in rows if r["model"] == model_name and r["frozen"] == "nothing")
        for r in rows:
            if r["model"] == model_name:
                r["speedup_vs_nothing"] = round(base["step_ms"] / r["step_ms"], 3)
    meta = {
        "benchmark": "freeze_depth",
        "models": args.models,
        "batch_size": args.batch_size,
        "img_size": args.img_size,
        "fast": args.fast,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "warmup": args.warmup,
        "steps": args.steps,
        **common.environment(args.device, args.precision),
        "command": "python benchmarks/freeze_depth.py " + " ".join(argv),
    }
    return meta, rows


def plot(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for model_name in meta["models"]:
        mine = [r for r in rows if r["model"] == model_name]
        prefix = [r for r in mine if not r["frozen"].endswith(" only")]
        middle = [r for r in mine if r["frozen"].endswith(" only")]
        for ax, key in zip(axes, ("step_ms", "peak_mem_mb")):
            line = ax.plot([r["frozen_pct"] for r in prefix], [r[key] or 0 for r in prefix], "o-",
                           label=f"{model_name}: frozen prefix")[0]
            for r in middle:
                ax.plot([r["frozen_pct"]], [r[key] or 0], "x", ms=10, color=line.get_color(),
                        label=f"{model_name}: {r['frozen']}")
    axes[0].set_ylabel("median step (ms)")
    axes[1].set_ylabel("peak memory (MB)")
    for ax in axes:
        ax.set_xlabel("parameters frozen (%)")
        ax.legend(fontsize=8)
    common.save_figure(fig, path, f"batch {meta['batch_size']}, {meta['img_size']} px, {meta['dtype']}", meta)


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        model_name, _, label = args.memory_child.partition("::")
        common.run_memory_child(builder(args, model_name, configurations(model_name, args.img_size)[label]))
        return None
    meta, rows = measure(args, argv)
    common.report(f"batch {meta['batch_size']}  {meta['img_size']} px  {meta['dtype']}  fast={meta['fast']}",
                  meta, rows, COLUMNS, args.results_file, plot, args.plot)
    return meta, rows


if __name__ == "__main__":
    main()
