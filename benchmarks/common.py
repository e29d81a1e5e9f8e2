"""Shared pieces of the benchmark scripts: models, devices, interleaved timing, memory, output.

Timing follows timm's ``benchmark.py``: warm up, synchronise, time every step, report the median.
Cases are interleaved (A B C, B C A, C A B, ...) so that drift in the machine's speed hits all alike.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, each case
built and run alone; on the CPU, the peak resident set size of a subprocess that builds and runs that
case alone, above the subprocess's resident size before the case is built (Linux: the peak is reset
through ``/proc/self/clear_refs`` and read as ``VmHWM``), so the interpreter and libraries don't count.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

Step = Callable[[], None]
# a case: builds its model and returns the function that runs one training step
Builder = Callable[[], Step]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_STEPS = 3  # steps run when measuring peak memory (the first allocates gradients and optimizer state)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> Any:
    """Autocast for bf16/fp16 (no loss scaling: these runs time steps, they don't train to convergence)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def build_backbone(name: str, img_size: int, num_classes: int = 0) -> tuple[nn.Module, int]:
    """A timm or torchvision model by name, random weights; with ``num_classes=0`` its classifier removed.

    Returns the model and the width of its output.
    """
    import timm
    import torchvision

    source, _, bare = name.rpartition("/")
    if source in ("", "timm") and timm.is_model(bare):
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
        try:  # transformers take the image size (position embeddings); CNNs refuse the argument
            model = timm.create_model(bare, img_size=img_size, **kwargs)
        except TypeError:
            model = timm.create_model(bare, **kwargs)
        return model, (model.num_features if num_classes == 0 else num_classes)
    if source in ("", "torchvision") and bare in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(bare, weights=None, num_classes=max(num_classes, 1000))
        if num_classes == 0:
            from freezable.detect import detect_groups

            for head in detect_groups(model).get("head", ()):
                parent, _, child = head.rpartition(".")
                setattr(model.get_submodule(parent), child, nn.Identity())
            with torch.no_grad():
                width = model.eval()(torch.zeros(1, 3, img_size, img_size)).shape[-1]
            return model.train(), width
        return model, num_classes
    raise SystemExit(f"--model {name!r}: not a timm or torchvision model name")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def time_interleaved(
    cases: dict[str, Step], device: torch.device, warmup: int, steps: int, progress: bool = True
) -> dict[str, list[float]]:
    """Runs every case ``warmup`` then ``steps`` times, interleaved; the milliseconds of each timed step.

    Each round runs every case once, in an order rotated by one each round (A B C, B C A, C A B, ...),
    so that drift hits all alike and no case always runs after the same neighbour (caches, allocator).
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    began = time.perf_counter()
    for round_ in range(warmup + steps):
        shift = round_ % len(names)  # rotate the order: no case always follows the same one
        for name in names[shift:] + names[:shift]:
            step = cases[name]
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
        elapsed = time.perf_counter() - began
        left = elapsed / (round_ + 1) * (warmup + steps - round_ - 1)
        phase(f"  round {round_ + 1}/{warmup + steps} ({'warm-up' if round_ < warmup else 'timed'}): "
              f"{elapsed:.0f} s so far, about {left:.0f} s left", progress)
    return times


def median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """The median of ``repeats`` timed calls of ``fn``, in milliseconds (the device synchronized around each)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def peak_memory_cuda(builder: Builder, device: torch.device) -> float:
    """MB: the peak allocated while the case, alone on the device, is built and stepped."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step = builder()
    for _ in range(MEMORY_STEPS):
        step()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> float | None:
    """Resets this process's peak RSS to its current RSS (Linux ``clear_refs``); the RSS in MB, or None."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") / 1024
    except (OSError, StopIteration, ValueError):
        return None


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MB since the last :func:`reset_peak_rss` (Linux ``VmHWM``), or None."""
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, StopIteration, ValueError):
        return None


def peak_memory_cpu(script: str, argv: list[str], case: str) -> float | None:
    """MB: the peak RSS a subprocess adds while it builds and steps ``case`` alone; None if not measurable."""
    cmd = [sys.executable, script, *argv, "--memory-child", case]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(script).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"memory of {case!r} not measured: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def run_memory_child(builder: Builder) -> None:
    """In the subprocess: peak RSS above the baseline (interpreter, libraries) while the case runs."""
    base = reset_peak_rss()
    step = builder()
    for _ in range(MEMORY_STEPS):
        step()
    peak = None if base is None else round(_status_kb("VmHWM") / 1024 - base, 1)
    print(json.dumps({"peak_rss_mb": peak}))


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    import timm

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "dtype": precision,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def summarise(times: list[float], batch_size: int) -> dict[str, float]:
    """Median step, fastest step, throughput, and ``spread_pct``: the interquartile range of the steps over their median."""
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
    return {
        "step_ms": round(median, 2),
        "step_ms_min": round(min(times), 2),
        "samples_per_sec": round(batch_size * 1000 / median, 1),
        "spread_pct": round(100 * (q3 - q1) / median, 1),
    }


def phase(message: str, progress: bool = True) -> None:
    """Says on stderr which phase a benchmark is in, so that no phase passes in silence."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "n/m"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def report(heading: str, meta: dict[str, Any], rows: list[dict[str, Any]], columns: list[str],
           results_file: str | None, plot: Callable[[str, dict[str, Any], list[dict[str, Any]]], None] | None = None,
           plot_file: str | None = None) -> None:
    """Prints the heading, the environment line and the table; writes the results file and the plot if asked."""
    print(heading)
    print(f"{meta['device']} ({meta['device_name']}, {meta['threads']} threads)  torch {meta['torch']}  "
          f"timm {meta['timm']}  {meta['date']}")
    print(format_table(rows, columns))
    if results_file:
        write_results(results_file, meta, rows)
        print(f"results: {results_file}")
    if plot is not None and plot_file:
        plot(plot_file, meta, rows)
        print(f"plot: {plot_file}")


def save_figure(fig: Any, path: str, title: str, meta: dict[str, Any]) -> None:
    """Titles a matplotlib figure with ``title`` and the device and torch version, saves it and closes it."""
    import matplotlib.pyplot as plt

    fig.suptitle(f"{title}, {meta['device']} ({meta['device_name']}), torch {meta['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``.json``: ``{"meta": ..., "rows": [...]}``; ``.csv``: one line per row, the meta repeated in columns."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    elif out.suffix == ".csv":
        full = [{**row, **meta} for row in rows]
        keys = list(dict.fromkeys(k for row in full for k in row))
        with out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
                             for r in full)
    else:
        raise SystemExit(f"--results-file {path!r}: use a .json or .csv name")


def check_output_suffix(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.results_file and Path(args.results_file).suffix not in (".json", ".csv"):
        parser.error(f"--results-file {args.results_file!r}: use a .json or .csv name")
    if args.plot and Path(args.plot).suffix != ".png":
        parser.error(f"--plot {args.plot!r}: use a .png name")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default=None, choices=list(PRECISIONS),
                        help="autocast dtype (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels-last")
    parser.add_argument("--compile", action="store_true", help="torch.compile each case's model")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per case")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--results-file", default=None, help="write results to X.json or X.csv")
    parser.add_argument("--plot", default=None, help="write a plot to X.png (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
