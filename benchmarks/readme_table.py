"""Markdown tables from benchmark results JSON, for the README.

    python benchmarks/readme_table.py benchmarks/results/cpu_resnet18.json ...   # print the tables
    python benchmarks/readme_table.py --update README.md benchmarks/results/*.json

With ``--update`` the text between ``<!-- benchmark-tables:start -->`` and
``<!-- benchmark-tables:end -->`` in that file is replaced by the tables.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- benchmark-tables:start -->", "<!-- benchmark-tables:end -->"

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


def table(results: dict[str, Any], source: str) -> str:
    meta, rows = results["meta"], results["rows"]
    kind = meta["benchmark"]
    what = meta.get("model") or ", ".join(meta.get("models", []))
    size = f"batch {meta['batch_size']}, {meta['img_size']} px"
    if kind == "feature_cache":
        size += f", {meta['num_samples']} samples"
    flags = [f for f in ("channels_last", "compile", "fast") if meta.get(f)]
    title = (f"**{kind}**: {what}, {size}, {meta['dtype']}{', ' + ', '.join(flags) if flags else ''}; "
             f"{meta['device']} ({meta['device_name']}, {meta['threads']} threads), torch {meta['torch']}, "
             f"timm {meta['timm']}, {meta['date']}. `{meta['command']}` → [`{source}`]({source})")
    columns = COLUMNS[kind]
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results .json files")
    parser.add_argument("--update", default=None, help="a Markdown file with the start/end markers to rewrite")
    args = parser.parse_args(argv)
    tables = "\n\n".join(table(json.loads(Path(p).read_text()), p) for p in args.results)
    if args.update:
        path = Path(args.update)
        text = path.read_text()
        if START not in text or END not in text:
            parser.error(f"{args.update} has no {START} ... {END} markers")
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: f"{START}\n{tables}\n{END}", text,
                      flags=re.S)
        path.write_text(text)
    else:
        print(tables)
    return tables


if __name__ == "__main__":
    main()
