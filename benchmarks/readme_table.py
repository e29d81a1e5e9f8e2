"""Markdown tables from benchmark results JSON: every table for benchmarks/README.md, the headline for README.md.

    python benchmarks/readme_table.py benchmarks/results/cpu_resnet18.json ...   # print the tables
    python benchmarks/readme_table.py --update benchmarks/README.md --headline README.md --headline docs/benchmarks.md \
        benchmarks/results/*.json

With ``--update`` the text between ``<!-- benchmark-tables:start -->`` and ``<!-- benchmark-tables:end -->``
in that file is replaced by the full tables; with ``--headline`` the text between
``<!-- benchmark-headline:start -->`` and ``<!-- benchmark-headline:end -->`` by one row per throughput run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

START, END = "<!-- benchmark-tables:start -->", "<!-- benchmark-tables:end -->"
HEADLINE_START, HEADLINE_END = "<!-- benchmark-headline:start -->", "<!-- benchmark-headline:end -->"

COLUMNS = {
    "throughput": ["mode", "step_ms", "samples_per_sec", "peak_mem_mb", "x_floor", "mem_x_floor", "speedup_vs_full"],
    "freeze_depth": ["model", "frozen", "frozen_pct", "step_ms", "peak_mem_mb", "speedup_vs_nothing"],
    "feature_cache": ["mode", "epoch_ms", "samples_per_sec", "speedup_vs_uncached"],
    "fast_levers": ["variant", "step_ms", "samples_per_sec", "x_floor", "folded"],
}


def _cell(value: Any) -> str:
    if value is None:
        return "n/m"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(results: dict[str, Any], source: str, link: str | None = None) -> str:
    """The table of one results file, titled with its run; it links ``link`` (default: ``source``), shown as ``source``.

    Example:
        >>> meta = {"benchmark": "feature_cache", "model": "resnet18", "batch_size": 16, "img_size": 128,
        ...         "num_samples": 64, "dtype": "fp32", "device": "cpu", "device_name": "CPU", "threads": 2,
        ...         "torch": "2.x", "timm": "1.x", "date": "today", "command": "python benchmarks/feature_cache.py"}
        >>> rows = [{"mode": "cached", "epoch_ms": 12.5, "samples_per_sec": 5120.0, "speedup_vs_uncached": 8.0}]
        >>> print(table({"meta": meta, "rows": rows}, "benchmarks/results/f.json", "results/f.json"))
        **feature_cache**: resnet18, batch 16, 128 px, 64 samples, fp32; cpu (CPU, 2 threads), torch 2.x, timm 1.x, today. `python benchmarks/feature_cache.py` → [`benchmarks/results/f.json`](results/f.json)
        <BLANKLINE>
        | mode | epoch_ms | samples_per_sec | speedup_vs_uncached |
        |---|---|---|---|
        | cached | 12.5 | 5120.0 | 8.00 |
    """
    meta, rows = results["meta"], results["rows"]
    kind = meta["benchmark"]
    what = meta.get("model") or ", ".join(meta.get("models", []))
    size = f"batch {meta['batch_size']}, {meta['img_size']} px"
    if kind == "feature_cache":
        size += f", {meta['num_samples']} samples"
    flags = [f for f in ("channels_last", "compile", "fast") if meta.get(f)]
    title = (f"**{kind}**: {what}, {size}, {meta['dtype']}{', ' + ', '.join(flags) if flags else ''}; "
             f"{meta['device']} ({meta['device_name']}, {meta['threads']} threads), torch {meta['torch']}, "
             f"timm {meta['timm']}, {meta['date']}. `{meta['command']}` → [`{source}`]({link or source})")
    columns = COLUMNS[kind]
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def headline(results: list[dict[str, Any]]) -> str:
    """One row per throughput run: freezable's and freezable_fast's time and memory over the floor's.

    Example:
        >>> meta = {"benchmark": "throughput", "model": "resnet18", "device": "cpu", "dtype": "fp32",
        ...         "batch_size": 16, "img_size": 128}
        >>> rows = [{"mode": "freezable", "x_floor": 1.01, "mem_x_floor": 0.99, "speedup_vs_full": 2.86},
        ...         {"mode": "freezable_fast", "x_floor": 0.7, "mem_x_floor": 1.25, "speedup_vs_full": 4.14}]
        >>> print(headline([{"meta": meta, "rows": rows}]))
        | model | device | freezable x_floor | freezable mem_x_floor | freezable_fast x_floor | freezable_fast mem_x_floor | freezable speedup_vs_full |
        |---|---|---|---|---|---|---|
        | resnet18, batch 16, 128 px, fp32 | cpu | 1.01 | 0.99 | 0.70 | 1.25 | 2.86 |
    """
    columns = ["model", "device", "freezable x_floor", "freezable mem_x_floor", "freezable_fast x_floor",
               "freezable_fast mem_x_floor", "freezable speedup_vs_full"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for result in results:
        meta = result["meta"]
        if meta["benchmark"] != "throughput":
            continue
        by_mode = {row["mode"]: row for row in result["rows"]}
        ours, fast = by_mode.get("freezable", {}), by_mode.get("freezable_fast", {})
        cells = [f"{meta['model']}, batch {meta['batch_size']}, {meta['img_size']} px, {meta['dtype']}", meta["device"],
                 ours.get("x_floor"), ours.get("mem_x_floor"), fast.get("x_floor"), fast.get("mem_x_floor"),
                 ours.get("speedup_vs_full")]
        lines.append("| " + " | ".join(c if isinstance(c, str) else _cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _replace(parser: argparse.ArgumentParser, path: Path, start: str, end: str, text: str) -> None:
    content = path.read_text()
    if start not in content or end not in content:
        parser.error(f"{path} has no {start} ... {end} markers")
    path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: f"{start}\n{text}\n{end}", content,
                           flags=re.S))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results .json files")
    parser.add_argument("--update", default=None, help="a Markdown file whose tables markers get every table")
    parser.add_argument("--headline", action="append", default=[], metavar="FILE",
                        help="a Markdown file whose headline markers get the headline (repeatable)")
    args = parser.parse_args(argv)
    results = [json.loads(Path(p).read_text()) for p in args.results]
    # links relative to the file they go into, so that they resolve where it is read (GitHub, an editor)
    base = Path(args.update).resolve().parent if args.update else Path.cwd()
    tables = "\n\n".join(table(r, p, os.path.relpath(Path(p).resolve(), base)) for r, p in zip(results, args.results))
    if args.update:
        _replace(parser, Path(args.update), START, END, tables)
    for path in args.headline:
        _replace(parser, Path(path), HEADLINE_START, HEADLINE_END, headline(results))
    if not (args.update or args.headline):
        print(tables)
    return tables


if __name__ == "__main__":
    main()
