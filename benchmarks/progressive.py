"""Progressive freezing against full fine-tuning: time to accuracy, final accuracy and memory, on real digits.

The task: a small CNN (``DigitsNet``: a stem, five conv-BatchNorm-ReLU blocks, a linear head; 32x32
inputs, scikit-learn's 8x8 ``load_digits`` scans upsampled) is pretrained on the digits 0-4, then
fine-tuned whole on the digits 5-9 (60% of their images to train on, 40% to test on; a seed draws the
pretraining, the split and the batch order), with AdamW and a cosine learning rate, in these modes:

* ``full``: every parameter trains for the whole run (the reference);
* ``schedule``: ``fz.ProgressiveFreezing(rule="schedule")``, FreezeOut's spacing over the run;
* ``gradient``: ``fz.ProgressiveFreezing(rule="gradient")``, AutoFreeze's test on gradient norms;
* ``schedule_uncached``, ``gradient_uncached``: the same without the prefix cache (the frozen prefix still
  runs without autograd), to show what the cache adds.

The inputs are fixed (no augmentation), so the frozen prefix's outputs are cached (``cache=True``); the
optimizer's state for frozen groups is released at each freeze. Every mode of a seed starts from the same
pretrained weights, split and batch order; modes run interleaved, in an order rotated each seed.

Timing: ``time.perf_counter`` around each epoch's training loop (evaluation on the test images after each
epoch is not counted). ``wall_s`` is a run's training time, ``tta_s`` its time to reach the target accuracy:
full fine-tuning's mean final accuracy less one standard deviation over the seeds (its seed spread),
judged after each epoch; each is the median over the seeds, and ``*_x_full`` the ratio to full
fine-tuning's median. Memory, exact, in MB (median over the seeds): ``opt_state_mb``, what the optimizer holds in
``optimizer.state`` at the end of the first and of the last epoch; ``saved_mb``, what autograd saves for
backward in a training step (an epoch's first); ``cache_mb``, the prefix cache's entries; ``step_mem_mb``,
the tensors a training step holds at its fullest (weights, gradients, optimizer state, saved for backward,
cache) in the first and the last epoch. Measured: ``peak_mem_mb`` and ``last_epoch_mem_mb``, on CUDA
``torch.cuda.max_memory_allocated`` over the run and over its last epoch; on the CPU the peak resident set
size above the process's size before the run, in a subprocess per mode (seed 0): it includes what the
allocator keeps after evaluation forwards and from earlier shapes, so read it as an upper bound. The run's
peak comes at its start, when every mode trains everything. The machine's load average is recorded: the timings
of a shared machine are noisy; read the medians.

    OMP_NUM_THREADS=1 python benchmarks/progressive.py --results-file benchmarks/results/cpu_progressive_digits.json \\
        --plot benchmarks/results/cpu_progressive_digits.png
    python benchmarks/progressive.py --quick      # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from accuracy import load_digits  # noqa: E402

import freezable as fz  # noqa: E402

MODES = ("full", "schedule", "gradient", "schedule_uncached", "gradient_uncached")
DEFAULT_MODES = ("full", "schedule", "gradient")
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
COLUMNS = ["mode", "wall_s", "wall_x_full", "tta_s", "tta_x_full", "reached_target", "acc_pct", "acc_std_pct",
           "acc_min_pct", "frozen_groups", "opt_state_mb_start", "opt_state_mb_end", "saved_mb_end", "cache_mb_end",
           "step_mem_mb_start", "step_mem_mb_end", "peak_mem_mb", "last_epoch_mem_mb"]
QUICK = {"seeds": 1, "epochs": 2, "pretrain_epochs": 1, "train_fraction": 0.15}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), help=f"any of {', '.join(MODES)}")
    parser.add_argument("--seeds", type=int, default=5, help="runs per mode, seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=32, help="the 8x8 scans upsampled to this size")
    parser.add_argument("--train-fraction", type=float, default=0.6, help="share of the target digits trained on")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak learning rate (cosine to 0)")
    parser.add_argument("--start", type=float, default=0.5, help="schedule: the fraction of the run at which the "
                        "first group freezes (FreezeOut's t_0)")
    parser.add_argument("--spacing", default="linear", choices=["linear", "cubic"], help="schedule: spacing")
    parser.add_argument("--window", type=int, default=None, help="gradient: steps per window (default: an epoch)")
    parser.add_argument("--threshold", type=float, default=0.1, help="gradient: relative change to freeze below")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory subprocesses")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.add_argument("--results-file", default=None, help="write results to X.json or X.csv")
    parser.add_argument("--plot", default=None, help="write a plot to X.png (needs matplotlib)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:  # its settings, less those given on the command line
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.modes = list(dict.fromkeys(n for item in args.modes for n in item.split(",") if n))
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if "full" not in args.modes:
        parser.error("--modes must include full: the target accuracy and the ratios are full fine-tuning's")
    for name in ("seeds", "epochs", "pretrain_epochs", "batch_size", "img_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.train_fraction < 1:
        parser.error(f"--train-fraction must be in (0, 1), got {args.train_fraction}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    common.check_output_suffix(parser, args)
    return args


# -- data and model ---------------------------------------------------------------------------------------


def digits(img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 scans, upsampled to ``img_size`` (bilinear), and their labels."""
    images, labels = load_digits()
    if img_size != images.shape[-1]:
        images = F.interpolate(images, size=img_size, mode="bilinear", align_corners=False)
    return images, labels


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitsNet(fz.Freezable, nn.Sequential):
    """A stem, five conv blocks (16, 32 and 64 channels at full, half and quarter resolution) and a linear head."""

    freeze_groups = {"stem": "0", "block1": "1", "block2": "2", "block3": "3", "block4": "4", "block5": "5",
                     "head": "6"}

    def __init__(self, classes: int = 5) -> None:
        super().__init__(_block(1, 16), _block(16, 16), _block(16, 32, 2), _block(32, 32), _block(32, 64, 2),
                         _block(64, 64), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)))


def pretrain(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> dict[str, torch.Tensor]:
    """The body's weights after training on the source digits (the head is replaced for the target)."""
    torch.manual_seed(seed)
    net = DigitsNet(len(SOURCE))
    source = labels < len(SOURCE)
    x, y = images[source], labels[source]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return {k: v for k, v in net.state_dict().items() if not k.startswith("6.")}


def target_split(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """``fraction`` of each target digit's images to train on, the rest to test on; labels 0..4."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    train, test = [], []
    for c in TARGET:
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        cut = max(1, round(fraction * len(idx)))
        train.append(idx[:cut])
        test.append(idx[cut:])
    tr, te = torch.cat(train), torch.cat(test)
    return {"x_train": images[tr], "y_train": labels[tr] - TARGET[0], "x_test": images[te], "y_test": labels[te] - TARGET[0]}


# -- one run ------------------------------------------------------------------------------------------------


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state``."""
    return sum(t.nelement() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


class SavedBytes:
    """Counts the bytes autograd saves for backward while active (``torch.autograd.graph.saved_tensors_hooks``)."""

    def __init__(self) -> None:
        self.nbytes = 0
        self._seen: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._seen:  # a tensor saved by several ops counts once
            self._seen.add(storage.data_ptr())
            self.nbytes += storage.nbytes()
        return t

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def run(mode: str, weights: dict[str, torch.Tensor], data: dict[str, torch.Tensor], args: argparse.Namespace,
        seed: int, device: torch.device, memory: bool = False) -> dict[str, Any]:
    """Fine-tunes a fresh model from ``weights`` in ``mode``; per-epoch time, accuracy and memory."""
    torch.manual_seed(1000 + seed)
    model = DigitsNet(len(TARGET))
    model.load_state_dict(weights, strict=False)
    model.to(device)
    x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
    x_test, y_test = data["x_test"].to(device), data["y_test"].to(device)
    steps_per_epoch = len(x_train) // args.batch_size
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    freezing = None
    if mode != "full":
        rule = mode.split("_")[0]
        settings = ({"total_steps": total, "start": args.start, "spacing": args.spacing} if rule == "schedule"
                    else {"window": args.window or steps_per_epoch, "threshold": args.threshold})
        freezing = fz.ProgressiveFreezing(model, rule, optimizer=optimizer, cache=not mode.endswith("_uncached"),
                                          **settings)
    generator = torch.Generator().manual_seed(20_000 + seed)
    epochs: list[dict[str, Any]] = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator).to(device)
        saved = SavedBytes()
        if memory:
            memory_reset(device)
        model.train()
        common.synchronize(device)
        start = time.perf_counter()
        for i in range(steps_per_epoch):
            batch = order[i * args.batch_size:(i + 1) * args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            keys = freezing.cache_keys(batch.cpu()) if freezing is not None and freezing.runner.cache else (
                contextlib.nullcontext())
            with keys, (saved.hooks() if i == 0 else contextlib.nullcontext()):
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            if i == 0:
                grad_bytes = sum(p.grad.nelement() * p.grad.element_size() for p in model.parameters()
                                 if p.grad is not None)
            optimizer.step()
            scheduler.step()
            if freezing is not None:
                freezing.step()
        common.synchronize(device)
        seconds = time.perf_counter() - start
        peak = memory_peak(device) if memory else None
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        cache = freezing.runner.feature_cache if freezing is not None else None
        epochs.append({
            "epoch_s": seconds,
            "acc": acc,
            "opt_state_bytes": state_bytes(optimizer),
            "saved_bytes": saved.nbytes,
            "grad_bytes": grad_bytes,
            "param_bytes": sum(p.nelement() * p.element_size() for p in model.parameters()),
            "cache_bytes": cache.nbytes if cache is not None else 0,
            "frozen": list(freezing.frozen_at) if freezing is not None else [],
            "peak_mem_mb": peak,
        })
    problems = fz.check(model, optimizer).problems
    if problems:
        raise SystemExit(f"{mode}: fz.check found problems: {problems}")
    if freezing is not None:
        freezing.close()
    return {"mode": mode, "seed": seed, "epochs": epochs, "frozen_at": dict(freezing.frozen_at) if freezing else {},
            "steps_per_epoch": steps_per_epoch}


def memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        common.reset_peak_rss()


def memory_peak(device: torch.device) -> float | None:
    """MB: the peak since :func:`memory_reset` (CUDA: allocated; CPU: resident set size, absolute)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return common.peak_rss_mb()


# -- the sweep ----------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, argv: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict]]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels = digits(args.img_size)
    load_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        weights = pretrain(images, labels, args.pretrain_epochs, seed)
        data = target_split(images, labels, args.train_fraction, seed)
        shift = seed % len(args.modes)
        for mode in args.modes[shift:] + args.modes[:shift]:
            result = run(mode, weights, data, args, seed, device, memory=device.type == "cuda")
            runs.append(result)
            common.phase(f"seed {seed} {mode}: {sum(e['epoch_s'] for e in result['epochs']):.1f} s, "
                         f"acc {100 * result['epochs'][-1]['acc']:.1f}%, frozen {list(result['frozen_at'])}",
                         not args.no_progress)
    load_end = os.getloadavg()
    memory = {}
    if device.type == "cpu" and not args.no_memory:
        for mode in args.modes:
            memory[mode] = cpu_memory(argv, mode)
    rows, target = summarise(args, runs, memory)
    meta = {
        "benchmark": "progressive",
        "data": "sklearn.datasets.load_digits (1797 8x8 scans), upsampled",
        "img_size": args.img_size,
        "source_classes": list(SOURCE),
        "target_classes": list(TARGET),
        "train_images": len(target_split(images, labels, args.train_fraction, 0)["x_train"]),
        "test_images": len(target_split(images, labels, args.train_fraction, 0)["x_test"]),
        "model": "DigitsNet: stem, block1..block5, head",
        "parameters": sum(p.numel() for p in DigitsNet(len(TARGET)).parameters()),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "pretrain_epochs": args.pretrain_epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW lr {args.lr} weight_decay 0.01, cosine to 0",
        "schedule": {"start": args.start, "spacing": args.spacing},
        "gradient": {"window": args.window or "an epoch", "threshold": args.threshold},
        "target_acc_pct": round(100 * target, 2),
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in load_end],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **common.environment(device, "fp32"),
        "command": "python benchmarks/progressive.py " + " ".join(argv),
    }
    return meta, rows, runs


def cpu_memory(argv: list[str], mode: str) -> dict[str, float] | None:
    """Peak RSS (MB above the start) over the run and over its last epoch, of ``mode``'s seed-0 run in a subprocess."""
    script = str(Path(__file__).resolve())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(script).parent.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, script, *argv, "--memory-child", mode], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"memory of {mode!r} not measured: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    """In the subprocess: one run of ``args.memory_child`` (seed 0), its peak RSS above the size before it."""
    torch.set_num_threads(args.threads)
    images, labels = digits(args.img_size)
    weights = pretrain(images, labels, args.pretrain_epochs, 0)
    data = target_split(images, labels, args.train_fraction, 0)
    base = common.reset_peak_rss()
    result = run(args.memory_child, weights, data, args, 0, torch.device("cpu"), memory=True)
    peaks = [e["peak_mem_mb"] for e in result["epochs"]]
    if base is None or None in peaks:
        print(json.dumps(None))
        return
    above = [max(0.0, peak - base) for peak in peaks]  # an epoch can end below the start: memory went back
    print(json.dumps({"peak_mem_mb": round(max(above), 1), "last_epoch_mem_mb": round(above[-1], 1)}))


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]], memory: dict[str, Any]
              ) -> tuple[list[dict[str, Any]], float]:
    finals = [r["epochs"][-1]["acc"] for r in runs if r["mode"] == "full"]
    target = statistics.fmean(finals) - (statistics.stdev(finals) if len(finals) > 1 else 0.0)
    for r in runs:
        elapsed = 0.0
        r["tta_s"] = None
        for e in r["epochs"]:
            elapsed += e["epoch_s"]
            if e["acc"] >= target - 1e-9:
                r["tta_s"] = elapsed
                break
        r["wall_s"] = sum(e["epoch_s"] for e in r["epochs"])
    rows = []
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        acc = [100 * r["epochs"][-1]["acc"] for r in mine]
        tta = [r["tta_s"] for r in mine]
        reached = [t for t in tta if t is not None]
        mb = lambda key, i: round(statistics.median(r["epochs"][i][key] for r in mine) / 2**20, 3)  # noqa: E731
        step = lambda i: round(statistics.median(_step_bytes(r["epochs"][i]) for r in mine) / 2**20, 2)  # noqa: E731
        rows.append({
            "mode": mode,
            "wall_s": round(statistics.median(r["wall_s"] for r in mine), 2),
            "tta_s": round(statistics.median(reached), 2) if len(reached) == len(tta) else None,
            "reached_target": f"{len(reached)}/{len(tta)}",
            "acc_pct": round(statistics.fmean(acc), 2),
            "acc_std_pct": round(statistics.stdev(acc), 2) if len(acc) > 1 else 0.0,
            "acc_min_pct": round(min(acc), 2),
            "frozen_groups": statistics.median(len(r["frozen_at"]) for r in mine),
            "opt_state_mb_start": mb("opt_state_bytes", 0),
            "opt_state_mb_end": mb("opt_state_bytes", -1),
            "saved_mb_start": mb("saved_bytes", 0),
            "saved_mb_end": mb("saved_bytes", -1),
            "cache_mb_end": mb("cache_bytes", -1),
            "step_mem_mb_start": step(0),
            "step_mem_mb_end": step(-1),
            "peak_mem_mb": None,
            "last_epoch_mem_mb": None,
            "seeds": len(mine),
        })
        if mine and mine[0]["epochs"][0]["peak_mem_mb"] is not None and args.device == "cuda":
            rows[-1]["peak_mem_mb"] = round(statistics.median(max(e["peak_mem_mb"] for e in r["epochs"]) for r in mine), 1)
            rows[-1]["last_epoch_mem_mb"] = round(statistics.median(r["epochs"][-1]["peak_mem_mb"] for r in mine), 1)
        elif memory.get(mode):
            rows[-1].update(memory[mode])
    full = next(r for r in rows if r["mode"] == "full")
    for row in rows:
        row["wall_x_full"] = round(row["wall_s"] / full["wall_s"], 3)
        row["tta_x_full"] = (round(row["tta_s"] / full["tta_s"], 3)
                             if row["tta_s"] is not None and full["tta_s"] else None)
    return rows, target


def _step_bytes(epoch: dict[str, Any]) -> int:
    """The tensors a training step holds at its fullest (exact): weights, gradients, optimizer state, what autograd
    saved for backward, and the prefix cache; temporaries and the allocator's slack are not counted."""
    return sum(epoch[k] for k in ("param_bytes", "grad_bytes", "opt_state_bytes", "saved_bytes", "cache_bytes"))


def plot(path: str, meta: dict[str, Any], rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Test accuracy against training time (each seed), and the optimizer's state per epoch (median), per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = dict(zip(MODES, ("black", "tab:blue", "tab:orange", "tab:cyan", "tab:red")))
    for mode in dict.fromkeys(r["mode"] for r in runs):
        mine = [r for r in runs if r["mode"] == mode]
        for n, r in enumerate(mine):
            elapsed = [sum(e["epoch_s"] for e in r["epochs"][:i + 1]) for i in range(len(r["epochs"]))]
            acc_ax.plot(elapsed, [100 * e["acc"] for e in r["epochs"]], color=colours[mode], alpha=0.6, lw=1,
                        label=mode if n == 0 else None)
        epochs = range(1, len(mine[0]["epochs"]) + 1)
        mem_ax.plot(epochs, [statistics.median(r["epochs"][i]["opt_state_bytes"] for r in mine) / 2**10
                             for i in range(len(mine[0]["epochs"]))], color=colours[mode], marker="o", label=mode)
    acc_ax.axhline(meta["target_acc_pct"], color="grey", ls="--", lw=1, label="target (full's mean - 1 sd)")
    acc_ax.set_ylim(max(0, meta["target_acc_pct"] - 15), 100.5)
    acc_ax.set_xlabel("training time, s (evaluation excluded)")
    acc_ax.set_ylabel("test accuracy, %")
    acc_ax.set_title(f"digits 5-9, {meta['seeds']} seeds")
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    mem_ax.set_xlabel("epoch")
    mem_ax.set_ylabel("optimizer state, KiB (median)")
    mem_ax.set_title("optimizer state released as groups freeze")
    mem_ax.grid(alpha=0.3)
    mem_ax.legend(fontsize=8)
    common.save_figure(fig, path, "progressive freezing vs full fine-tuning", meta)


def main(argv: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return {}, []
    meta, rows, runs = measure(args, argv)
    common.report(f"full fine-tuning vs progressive freezing, digits 5-9 at {args.img_size} px, {args.seeds} seeds, "
                  f"{args.epochs} epochs; target accuracy {meta['target_acc_pct']}% (load average "
                  f"{meta['loadavg_start'][0]} -> {meta['loadavg_end'][0]})", meta, rows, COLUMNS,
                  None, None, None)
    if args.results_file:
        common.write_results(args.results_file, meta, rows)
        if args.results_file.endswith(".json"):  # the per-epoch record of every run, for replotting
            data = json.loads(Path(args.results_file).read_text())
            data["runs"] = runs
            Path(args.results_file).write_text(json.dumps(data, indent=1) + "\n")
        print(f"results: {args.results_file}")
    if args.plot:
        plot(args.plot, meta, rows, runs)
        print(f"plot: {args.plot}")
    return meta, rows


if __name__ == "__main__":
    main()
