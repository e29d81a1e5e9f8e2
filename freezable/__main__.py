"""Look before training: ``python -m freezable presets`` and ``show MODEL``.

The sweeps that check detection over whole model libraries are the project's own tools: ``python tools/sweep.py``.

Example:
    >>> main(["presets", "timm.hrnet.*"])
    timm.hrnet.backbone  HRNet's stem and four stages frozen, BatchNorm held in eval; the rest trains
    0
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from torch import nn

from ._models import SOURCES, build_model, sources_of
from .errors import FreezableError, closest
from .groups import is_block, part_of
from .presets import get_preset, list_presets
from .wrapper import FrozenBackbone

__all__ = ["main"]

def _presets(args: argparse.Namespace) -> None:
    names = list_presets(args.pattern)
    if not names:
        raise FreezableError(f"no preset matches {args.pattern!r}; {closest(args.pattern, list_presets())}")
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {get_preset(name).description}")


def _model_name(model: str, preset: str | None) -> str:
    """``model`` with the library prefix that a ``timm.*`` or ``torchvision.*`` preset implies."""
    source = (preset or "").partition(".")[0]
    if "/" not in model and source in SOURCES:
        return f"{source}/{model}"
    return model


_PREFIXED = ("transformers", "open_clip")  # sources named only with their prefix: transformers/CLIPModel


def _source(model: nn.Module) -> str:
    return next((s for s in SOURCES + _PREFIXED if type(model).__module__.startswith(s + ".")),
                type(model).__module__)


def _built_from(name: str, source: str) -> str:
    """The first line of ``show``: the library that built the model, and the other one only where it has the name."""
    bare = name.rpartition("/")[2]
    others = [s for s in sources_of(bare) if s != source]
    line = f"{bare} built from {source} (meta device, no weights)"
    if others:
        rule = "" if "/" in name else "; a bare name both libraries have is torchvision's"
        line += f"; {others[0]} has it too: {others[0]}/{bare}{rule}"
    return line


def _show(args: argparse.Namespace) -> None:
    if args.preset is not None:
        get_preset(args.preset)  # a bad name fails before the model is built
    name = _model_name(args.model, args.preset)
    backbone = build_model(name, features_only=args.features_only)
    fb = FrozenBackbone(backbone, trainable=args.trainable, preset=args.preset)
    print(_built_from(name, _source(backbone)))
    print(fb)
    print()
    blocks: dict[str, list[str]] = {}  # part ("" for plain names) -> its block groups
    for group in fb.freeze_group_names:
        if is_block(group):
            blocks.setdefault(part_of(group)[0], []).append(group)
    for name in fb.freeze_group_names:
        own = blocks.get(part_of(name)[0], []) if is_block(name) else []
        if name in own[1:]:
            continue
        if own:
            print(f"{own[0]} ... {own[-1]}: {len(own)} blocks inside the stages")
            continue
        group = fb.freeze_group(name)
        members = list(group.modules) + list(group.parameters)
        more = f", ... ({len(members)} in all)" if len(members) > 6 else ""
        print(f"{name}: {', '.join(m or '<whole model>' for m in members[:6])}{more}")
    print()
    print(fb.freeze_summary())
    print("(no group): parameters outside every group; only groups you register name them"
          if "(no group)" in fb.freeze_summary() else "every parameter is in a group")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (2 for a bad model, preset or group name)."""
    parser = argparse.ArgumentParser(prog="freezable", description=__doc__.splitlines()[0],
                                     epilog="Detection checked over whole model libraries: python tools/sweep.py, "
                                     "in a clone of the repository.")
    commands = parser.add_subparsers(dest="command", required=True)
    presets = commands.add_parser("presets", help="list presets with their descriptions")
    presets.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default: all)")
    presets.set_defaults(run=_presets)
    show = commands.add_parser("show", help="a model's groups and freeze summary, built on the meta device")
    show.add_argument("model", help="torchvision or timm model name (timm/NAME or torchvision/NAME to choose), "
                      "transformers/CLASS (a Hugging Face model class, default config) or open_clip/NAME")
    show.add_argument("--preset", help="apply this preset")
    show.add_argument("--features-only", action="store_true", help="build the timm model with features_only=True")
    show.add_argument("--trainable", nargs="*", default=[], metavar="GROUP", help="groups or specs left trainable")
    show.set_defaults(run=_show)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed its usage error (code 2) or --help (code 0)
        return e.code if isinstance(e.code, int) else 2
    try:
        code = args.run(args)
        sys.stdout.flush()
    except FreezableError as e:
        print(f"freezable: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
