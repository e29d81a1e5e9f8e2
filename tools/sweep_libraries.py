"""Sweeps group detection over one tiny model per family of smp, ultralytics, diffusers and torchvision's feature
extractors, and prints per library how many are right, absent or wrong.

    python tools/sweep_libraries.py                          # every library installed (about a minute on a CPU)
    python tools/sweep_libraries.py --libraries smp diffusers
    python tools/sweep_libraries.py --models smp/Unet-resnet18

Each model is built with random weights (nothing is downloaded; ultralytics runs offline) and checked against
its library's own notion of its parts (``freezable._oracles.library_check``: its attributes, its own freeze
function, its yaml, its stage split, the order a forward on a real input runs the groups). Right: every check
passes; absent: no groups, for a reason the sample states; wrong: a check fails. Exits 1 when any is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before anything imports ultralytics: no connectivity check
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's freezable, run from anywhere

from freezable._oracles import LIBRARIES, LIBRARY_SAMPLES, library_check, library_of  # noqa: E402

STATUSES = ("right", "absent", "wrong")


def sweep(libraries: list[str], models: list[str] | None = None) -> list[dict[str, object]]:
    """A row per sample of the named libraries, or per named sample (see ``library_check``)."""
    return [library_check(key) for key in LIBRARY_SAMPLES
            if library_of(key) in libraries and (models is None or key in models)]


def report(rows: list[dict[str, object]], libraries: list[str]) -> str:
    lines = []
    for library in libraries:
        mine = [r for r in rows if r["library"] == library]
        if mine and all(r["status"] == "not installed" for r in mine):
            lines.append(f"{library}: not installed ({LIBRARIES[library]})")
            continue
        counts = ", ".join(f"{sum(r['status'] == s for r in mine)} {s}" for s in STATUSES)
        lines.append(f"{library}: {counts}")
        for row in mine:
            if row["status"] != "right":
                lines.append(f"  {row['status']}: {row['model']}: " + "; ".join(map(str, row["problems"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=list(LIBRARIES))
    parser.add_argument("--models", nargs="+", choices=list(LIBRARY_SAMPLES), metavar="LIBRARY/MODEL",
                        help="only these samples")
    args = parser.parse_args(argv)
    libraries = sorted({library_of(m) for m in args.models}, key=list(LIBRARIES).index) if args.models else args.libraries
    start = time.perf_counter()
    rows = sweep(libraries, args.models)
    print(report(rows, libraries))
    print(f"{len(rows)} models in {time.perf_counter() - start:.0f} s")
    return 1 if any(r["status"] == "wrong" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
