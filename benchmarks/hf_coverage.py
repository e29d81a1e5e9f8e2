"""Coverage of Hugging Face group detection: every architecture of transformers' sequence- and
image-classification auto mappings, built from its default config (at most 4 layers) on the meta device.

An architecture is covered when :func:`freezable.detect.transformers.hf_groups` finds a ``stem``, blocks and a
``head`` and those cover every parameter. Prints the figure and every architecture not covered, with the
reason (a default config that does not build is listed apart: no detection can run on it).

    python benchmarks/hf_coverage.py
    python benchmarks/hf_coverage.py --results-file hf_coverage.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freezable._hf_sweep import sweep  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-file", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = sweep()
    covered = [r for r in results if r.covered]
    unbuilt = [r for r in results if r.reason.startswith("does not build")]
    built = len(results) - len(unbuilt)
    summary = {
        "transformers": transformers.__version__,
        "architectures": len(results),
        "covered": len(covered),
        "covered_pct": round(100 * len(covered) / len(results), 1),
        "built": built,
        "covered_of_built_pct": round(100 * len(covered) / built, 1) if built else 0.0,
    }
    print(f"transformers {summary['transformers']}: {len(covered)} of {len(results)} architectures covered "
          f"({summary['covered_pct']}%); {len(covered)} of the {built} that build from their default config "
          f"({summary['covered_of_built_pct']}%)")
    for title, rows in (("not covered", [r for r in results if not r.covered and r not in unbuilt]),
                        ("do not build from their default config", unbuilt)):
        print(f"\n{title} ({len(rows)}):")
        for r in rows:
            print(f"  {r.task:8s} {r.architecture:45s} {r.reason}")
    if args.results_file is not None:
        rows = [{"task": r.task, "model_type": r.model_type, "architecture": r.architecture,
                 "covered": r.covered, "groups": list(r.groups), "reason": r.reason} for r in results]
        args.results_file.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
