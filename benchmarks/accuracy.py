"""What freezing right is worth in accuracy: transfer learning on scikit-learn's handwritten digits.

A small CNN with BatchNorm and dropout is pretrained on the digits 0-4 of ``sklearn.datasets.load_digits``
(1,797 real 8x8 scans). A new linear head then learns the digits 5-9 from a few labelled images per
class, the backbone frozen, at several batch sizes, in four modes:

* ``naive``: ``requires_grad=False`` on the backbone, the model in train mode, as most loops do:
  BatchNorm normalises with batch statistics and its running statistics drift to the new data,
  dropout runs inside the frozen backbone;
* ``freezable``: ``fz.FrozenBackbone(backbone)``: the backbone computes as at inference;
* ``linear_probe``: the frozen backbone's features computed once (``fz.FeatureCache``), the head
  trained on them;
* ``freezable_train_bn``: ``fz.FrozenBackbone(backbone).freeze(train_bn=True)``: the backbone frozen
  but its BatchNorm layers trainable (affine parameters and statistics, fastai's ``train_bn``);
* ``full_finetune``: the reference: every parameter trains (backbone at a tenth of the head's rate).

Two target settings: ``same_domain`` (the new digits as scanned) and ``shifted`` (the new digits
with lower contrast on a grey background, a shift of the input distribution). Each row is one
(setting, mode, batch size) over several seeds (a seed draws the pretraining, the labelled
images and the head's initialisation); ``acc_pct`` is the test accuracy on the rest of digits 5-9.

    python benchmarks/accuracy.py --results-file benchmarks/results/cpu_accuracy_digits.json \\
        --plot benchmarks/results/cpu_accuracy_digits.png
    python benchmarks/accuracy.py --quick      # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
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

MODES = ("naive", "freezable", "linear_probe", "freezable_train_bn", "full_finetune")
SETTINGS = ("same_domain", "shifted")
SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
COLUMNS = ["setting", "mode", "batch_size", "acc_pct", "acc_std_pct", "acc_min_pct", "bn_mean_shift_sd",
           "loss_gap_nats", "train_s"]
QUICK = {"seeds": 1, "batch_sizes": [4, 32], "shots": 4, "steps": 3, "pretrain_epochs": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), help=f"any of {', '.join(MODES)}")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help=f"any of {', '.join(SETTINGS)}")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--seeds", type=int, default=5, help="runs per row, seeds 0 .. N-1")
    parser.add_argument("--shots", type=int, default=20, help="labelled training images per new digit")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of the head's training, at every batch size")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate for the head")
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(
        f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(map(str, v))}" for k, v in QUICK.items()))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--results-file", default=None, help="write results to X.json or X.csv")
    parser.add_argument("--plot", default=None, help="write a plot to X.png (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.quick:  # its settings, less those given on the command line
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.modes = _choices(parser, "mode", args.modes, MODES)
    args.settings = _choices(parser, "setting", args.settings, SETTINGS)
    for name in ("seeds", "shots", "steps", "pretrain_epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    common.check_output_suffix(parser, args)
    return args


def _choices(parser: argparse.ArgumentParser, what: str, given: list[str], valid: tuple[str, ...]) -> list[str]:
    names = list(dict.fromkeys(n for item in given for n in item.split(",") if n))
    for name in names:
        if name not in valid:
            parser.error(f"unknown {what} {name!r}; choose from {', '.join(valid)}")
    return names


# -- data and model ---------------------------------------------------------------------------------------


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits as (N, 1, 8, 8) floats in [0, 1] and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    return images, torch.tensor(digits.target)


def shift_domain(images: torch.Tensor) -> torch.Tensor:
    """Lower contrast on a grey background (another scanner): what the frozen statistics never saw."""
    return 0.35 + 0.4 * images


def split(images: torch.Tensor, labels: torch.Tensor, shots: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``shots`` images per target digit to train on, the other target images to test on; labels 0..4."""
    train, test = [], []
    for c in TARGET_CLASSES:
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        train.append(idx[:shots])
        test.append(idx[shots:])
    tr, te = torch.cat(train), torch.cat(test)
    return images[tr], labels[tr] - TARGET_CLASSES[0], images[te], labels[te] - TARGET_CLASSES[0]


def make_backbone() -> nn.Sequential:
    """Three conv-BatchNorm-ReLU blocks, dropout on the 64 pooled features."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3))


def pretrain(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> nn.Sequential:
    """The backbone, trained with a throw-away head on the source digits."""
    torch.manual_seed(seed)
    backbone = make_backbone()
    model = nn.Sequential(backbone, nn.Linear(64, len(SOURCE_CLASSES)))
    source = sum(labels == c for c in SOURCE_CLASSES).bool()
    x, y = images[source], labels[source]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return backbone


# -- one run ------------------------------------------------------------------------------------------------


def bn_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_shift(before: list[tuple[torch.Tensor, torch.Tensor]], after: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> float:
    """Mean over BatchNorm channels of |running mean after - before|, in standard deviations before."""
    shifts = [((m1 - m0).abs() / (v0 + 1e-5).sqrt()) for (m0, v0), (m1, _) in zip(before, after)]
    return torch.cat(shifts).mean().item()


def build(mode: str, backbone: nn.Sequential, seed: int) -> tuple[nn.Module, nn.Module, list[dict[str, Any]]]:
    """(model, head, optimizer groups) for ``mode``; the head is a fresh linear layer."""
    backbone = copy.deepcopy(backbone)
    torch.manual_seed(1000 + seed)
    head = nn.Linear(64, len(TARGET_CLASSES))
    if mode == "naive":
        backbone.requires_grad_(False)
    elif mode in ("freezable", "linear_probe"):
        backbone = fz.FrozenBackbone(backbone)
    elif mode == "freezable_train_bn":
        backbone = fz.FrozenBackbone(backbone).freeze(train_bn=True)
    groups = [{"params": [*head.parameters(), *(p for p in backbone.parameters()
                                                 if p.requires_grad and mode != "full_finetune")]}]
    if mode == "full_finetune":
        groups.append({"params": list(backbone.parameters()), "lr_factor": 0.1})
    return nn.Sequential(backbone, head), head, groups


def run(mode: str, backbone: nn.Sequential, data: tuple[torch.Tensor, ...], batch_size: int, args: argparse.Namespace,
        seed: int) -> dict[str, float]:
    """Trains the head (the BatchNorm layers too in ``freezable_train_bn``, all of the model in ``full_finetune``); accuracy, BatchNorm shift, loss gap, time."""
    x_train, y_train, x_test, y_test = data
    model, head, groups = build(mode, backbone, seed)
    for group in groups:
        group["lr"] = args.lr * group.pop("lr_factor", 1.0)
    opt = torch.optim.Adam(groups)
    before = bn_stats(model)
    generator = torch.Generator().manual_seed(2000 + seed)
    start = time.perf_counter()
    features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if mode == "linear_probe":
        cache = fz.FeatureCache(model[0])
        features = lambda x, keys: cache(x, keys=keys.tolist())  # noqa: E731
    else:
        features = lambda x, keys: model[0](x)  # noqa: E731
    model.train()
    for batch in batches(len(x_train), batch_size, args.steps, generator):
        opt.zero_grad()
        F.cross_entropy(head(features(x_train[batch], batch)), y_train[batch]).backward()
        opt.step()
    train_s = time.perf_counter() - start
    drift = bn_shift(before, bn_stats(model))
    gap = loss_gap(model, x_train, y_train, batch_size)
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"acc": acc, "drift": drift, "gap": gap, "train_s": train_s}


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches of indices, epoch after epoch of shuffled ``0..n-1`` (a short last batch dropped)."""
    batch_size = min(batch_size, n)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=generator)
        out.extend(perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size))
    return out[:steps]


def loss_gap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """The head's training loss as computed in train mode minus the same in eval mode (on a copy: no drift)."""
    losses = []
    for training in (True, False):
        probe = copy.deepcopy(model).train(training)
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(statistics.fmean(F.cross_entropy(probe(x[i:i + batch_size]), y[i:i + batch_size]).item()
                                           for i in range(0, len(x), batch_size)))
    return losses[0] - losses[1]


# -- the sweep ----------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    images, labels = load_digits()
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    source_acc = []
    total = args.seeds * len(args.settings) * len(args.modes) * len(args.batch_sizes)
    with tqdm(total=total, desc="runs", disable=args.no_progress, file=sys.stderr) as bar:
        for seed in range(args.seeds):
            backbone = pretrain(images, labels, args.pretrain_epochs, seed)
            source_acc.append(source_accuracy(backbone, images, labels))
            generator = torch.Generator().manual_seed(seed)
            target = split(images, labels, args.shots, generator)
            for setting in args.settings:
                data = target if setting == "same_domain" else tuple(
                    shift_domain(t) if t.is_floating_point() else t for t in target)
                for mode in args.modes:
                    for batch_size in args.batch_sizes:
                        runs.setdefault((setting, mode, batch_size), []).append(
                            run(mode, backbone, data, batch_size, args, seed))
                        bar.update()
    rows = [summarise_runs(setting, mode, batch_size, results)
            for (setting, mode, batch_size), results in runs.items()]
    rows.sort(key=lambda r: (args.settings.index(r["setting"]), args.modes.index(r["mode"]), r["batch_size"]))
    meta = {
        "benchmark": "accuracy",
        "data": "sklearn.datasets.load_digits (1797 8x8 images)",
        "source_classes": list(SOURCE_CLASSES),
        "target_classes": list(TARGET_CLASSES),
        "shots_per_class": args.shots,
        "test_images": len(target[2]),
        "seeds": args.seeds,
        "steps": args.steps,
        "pretrain_epochs": args.pretrain_epochs,
        "lr": args.lr,
        "source_acc_pct": round(100 * statistics.fmean(source_acc), 2),
        **common.environment(torch.device("cpu"), "fp32"),
        "command": "python benchmarks/accuracy.py " + " ".join(argv),
    }
    return meta, rows


def source_accuracy(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """How well the pretrained features separate the source digits: a nearest-class-mean check in eval mode."""
    source = sum(labels == c for c in SOURCE_CLASSES).bool()
    with torch.no_grad():
        feats = copy.deepcopy(backbone).eval()(images[source])
    y = labels[source]
    means = torch.stack([feats[y == c].mean(0) for c in SOURCE_CLASSES])
    return (torch.cdist(feats, means).argmin(1) == y).float().mean().item()


def summarise_runs(setting: str, mode: str, batch_size: int, results: list[dict[str, float]]) -> dict[str, Any]:
    acc = [100 * r["acc"] for r in results]
    return {
        "setting": setting,
        "mode": mode,
        "batch_size": batch_size,
        "acc_pct": round(statistics.fmean(acc), 2),
        "acc_std_pct": round(statistics.stdev(acc), 2) if len(acc) > 1 else 0.0,
        "acc_min_pct": round(min(acc), 2),
        "acc_max_pct": round(max(acc), 2),
        "bn_mean_shift_sd": round(statistics.fmean(r["drift"] for r in results), 4),
        "loss_gap_nats": round(statistics.fmean(r["gap"] for r in results), 4),
        "train_s": round(statistics.fmean(r["train_s"] for r in results), 3),
        "seeds": len(results),
    }


def plot(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Test accuracy against batch size, a line per mode (error bars: one standard deviation), a panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            mine = [r for r in rows if r["setting"] == setting and r["mode"] == mode]
            probe = mode == "linear_probe"  # the same features as freezable: drawn over it, dashed
            ax.errorbar([r["batch_size"] for r in mine], [r["acc_pct"] for r in mine],
                        yerr=[r["acc_std_pct"] for r in mine], marker="x" if probe else "o", capsize=3,
                        linestyle="--" if probe else "-", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["batch_size"] for r in rows}), [str(b) for b in sorted({r["batch_size"] for r in rows})])
        ax.set_xlabel("batch size")
        ax.set_title(setting.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test accuracy, % (mean of {meta['seeds']} seeds)")
    axes[0][-1].legend()
    common.save_figure(fig, path, f"digits 5-9, {meta['shots_per_class']} shots/class", meta)


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    meta, rows = measure(args, argv)
    common.report(f"transfer to digits 5-9, {meta['shots_per_class']} shots/class, {meta['seeds']} seeds, "
                  f"source nearest-mean accuracy {meta['source_acc_pct']}%", meta, rows, COLUMNS,
                  args.results_file, plot if args.plot else None, args.plot)
    return meta, rows


if __name__ == "__main__":
    main()
