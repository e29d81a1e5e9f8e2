"""Group detection checked against its oracles over whole model libraries: every model right, absent or wrong.

    python tools/sweep.py torchvision                     # every torchvision model, all tasks (121)
    python tools/sweep.py timm                            # every timm classifier (1,371; about 5 minutes)
    python tools/sweep.py timm --features-only            # the same as features_only backbones (about 10 minutes)
    python tools/sweep.py timm --family-sample            # one timm model per family
    python tools/sweep.py hf                              # transformers' classification architectures
    python tools/sweep.py libraries                       # smp, ultralytics, diffusers, torchvision's extractors
    python tools/sweep.py multipart                       # Hugging Face and open_clip models of several parts
    python tools/sweep.py all                             # all of the above (about 20 minutes)
    python tools/sweep.py torchvision --markdown docs/coverage.md   # and rewrite its section of the coverage page

Prints per source ``label: R right, A absent, W wrong`` and every miss on a line of its own, in words
(``absent: caformer_s18: no stem: timm gives it no group_matcher``); exits 1 when anything is wrong, 0 otherwise
(absent groups are documented: detection never guesses). The rows and oracles are in ``tools/sweeps/`` and
``tools/oracles/``; ``tools/sweeps/report.py`` says what right, absent and wrong mean.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # before anything imports ultralytics: no connectivity check
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's freezable and tools, run from anywhere

from tools.oracles.classifiers import trainable_layers_body  # noqa: E402
from tools.sweeps import classifiers, hf, libraries, multipart  # noqa: E402
from tools.sweeps.report import Section, exit_code, report, update_page  # noqa: E402

SOURCES = ("torchvision", "timm", "hf", "libraries", "multipart")
PAGE_ORDER = ("torchvision", "timm", "timm-features", "timm-family-sample", "timm-features-family-sample", "hf",
              "libraries", "multipart")
_TIMM = ("torch", "timm")


def _command(source: str, args: argparse.Namespace) -> str:
    flags = [f for f, on in (("--features-only", args.features_only and source == "timm"),
                             ("--family-sample", args.family_sample and source == "timm")) if on]
    return " ".join(["python tools/sweep.py", source, *flags])


def _presets_note(rows: list) -> list[str]:
    detectors = [r for r in rows if trainable_layers_body(r.model) is not None]
    right = [r for r in detectors if not any(x.startswith("trainable_backbone_layers_") for x in r.reasons)]
    return [f"trainable_backbone_layers_N = torchvision's rule for every N: {len(right)}/{len(detectors)} FPN detectors"
            ] if detectors else []


def torchvision_section(args: argparse.Namespace) -> Section:
    rows = classifiers.sweep("torchvision", args.models or classifiers.model_names("torchvision"),
                             progress=not args.no_progress)
    notes = _presets_note(rows)
    if not args.models:
        rows += classifiers.forward_sample("torchvision")
    return Section("torchvision", "torchvision: every model (all tasks)", _command("torchvision", args), rows,
                   notes, packages=("torch", "torchvision"), about=(
                       "`head` is the classifier attribute (a detector's predictors), `backbone` and `head` (with a "
                       "detector's or segmenter's task groups) split the parameters, stem and stages split the backbone "
                       "with each block inside one stage; the FPN detectors' `trainable_backbone_layers_N` presets "
                       "freeze what torchvision's own rule freezes; on a sample of small real models the stages and "
                       "blocks run in forward order."))


def timm_section(args: argparse.Namespace) -> Section:
    names = args.models or classifiers.model_names("timm", args.family_sample)
    rows = classifiers.sweep("timm", names, features_only=args.features_only, progress=not args.no_progress)
    if not args.models and not args.features_only:
        rows += classifiers.forward_sample("timm")
    what = "every model as a features_only backbone" if args.features_only else "every classifier"
    if args.family_sample:
        what = ("one model per family as a features_only backbone" if args.features_only
                else "one classifier per family")
    key = "timm" + ("-features" if args.features_only else "") + ("-family-sample" if args.family_sample else "")
    about = ("Stem, stages and blocks equal those of the same architecture built as a classifier, on the parameters "
             "both models have (timm prunes what features do not use); no head; absent where the classifier has no "
             "stages either." if args.features_only else
             "`head` is timm's `get_classifier()` or what timm's `reset_classifier` replaces (they differ for VOLO, "
             "whose `reset_classifier` and `pretrained_cfg[\"classifier\"]` name `aux_head` too: timm's own notion, "
             "accepted), `backbone` and `head` split the parameters, stem and stages split the backbone with each block "
             "inside one stage; absent: no stem where timm's `group_matcher` names none, no head where the model has "
             "no classifier; on a sample of small real models the stages and blocks run in forward order.")
    return Section(key, f"timm: {what}", _command("timm", args), rows, packages=_TIMM, about=about)


def hf_section(args: argparse.Namespace) -> Section:
    import transformers

    transformers.logging.set_verbosity_error()
    sample = [a for a in hf.architectures() if a[2] in args.models] if args.models else None
    return Section("hf", "Hugging Face: sequence- and image-classification architectures (default configs)",
                   _command("hf", args), hf.rows(hf.sweep(sample)), packages=("torch", "transformers"), about=(
                       "Each architecture, built from its default config with at most 4 layers on the meta device, has "
                       "a stem, blocks and a head whose groups cover every parameter; absent: the documented gaps "
                       "only; skipped: a default config that transformers itself cannot build."))


def libraries_section(args: argparse.Namespace) -> Section:
    names = args.libraries or list(libraries.LIBRARIES)
    if args.models:
        names = [n for n in libraries.LIBRARIES if any(libraries.library_of(m) == n for m in args.models)]
    return Section("libraries", "Other libraries: one tiny model per family", _command("libraries", args),
                   libraries.sweep(names, args.models),
                   packages=("torch", "torchvision", "timm", "segmentation-models-pytorch", "ultralytics", "diffusers"),
                   about=("Each group against the library's own notion: its attributes, its own freeze function "
                          "(smp's `freeze_encoder()`, the ultralytics trainer's `freeze=N`), its yaml, its stage "
                          "split, the model a feature extractor came from, the order a forward on a real input runs."))


def multipart_section(args: argparse.Namespace) -> Section:
    checks = multipart.sweep(libraries=args.libraries)
    return Section("multipart", "Models of several parts: one tiny model per family", _command("multipart", args),
                   multipart.rows(checks), multipart.notes(checks),
                   packages=("torch", "transformers", "open-clip-torch", "timm"),
                   about=("Several checks per model: each group is the attribute it stands for, a model inside a part "
                          "gets its own library's groups, each part's groups run in forward order, no stage or block "
                          "lies across two parts, and the library's own freeze and lock functions (`freeze_backbone()`, "
                          "`lock_image_tower(N)`) freeze what the preset or group freezes."))


RUNNERS: dict[str, Callable[[argparse.Namespace], Section]] = {
    "torchvision": torchvision_section, "timm": timm_section, "hf": hf_section, "libraries": libraries_section,
    "multipart": multipart_section}


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    found.add_argument("sources", nargs="+", choices=[*SOURCES, "all"], metavar="SOURCE",
                       help=f"one or more of {', '.join(SOURCES)}, or all")
    found.add_argument("--models", nargs="+", metavar="NAME",
                       help="only these models (timm/torchvision names, hf class names, libraries' LIBRARY/MODEL)")
    found.add_argument("--family-sample", action="store_true", help="timm: one model per family")
    found.add_argument("--features-only", action="store_true", help="timm: built with features_only=True")
    found.add_argument("--libraries", nargs="+", metavar="LIBRARY",
                       help=f"libraries: some of {', '.join(libraries.LIBRARIES)}; multipart: transformers, open_clip")
    found.add_argument("--markdown", type=Path, metavar="PAGE",
                       help="rewrite each source's section of this page (docs/coverage.md)")
    found.add_argument("--no-progress", action="store_true")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sources = [s for s in SOURCES if s in args.sources or "all" in args.sources]
    if args.markdown and (args.models or args.libraries):
        parser().error("--markdown writes whole sections: drop --models and --libraries")
    sections = []
    for source in sources:
        runs = [False, True] if source == "timm" and "all" in args.sources else [args.features_only]
        for features_only in runs:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                section = RUNNERS[source](argparse.Namespace(**{**vars(args), "features_only": features_only}))
            section.seconds = time.perf_counter() - start
            print(report(section.rows, section.notes))
            print(f"{len(section.rows)} models in {section.seconds:.0f} s", flush=True)
            sections.append(section)
    if args.markdown:
        page = args.markdown.read_text() if args.markdown.exists() else ""
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(update_page(page, sections, PAGE_ORDER))
    return exit_code(r for s in sections for r in s.rows)


if __name__ == "__main__":
    sys.exit(main())
