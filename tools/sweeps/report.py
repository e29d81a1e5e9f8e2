"""What every sweep reports: a row per model, right, absent or wrong, each miss one line in words.

* **right**: every group agrees with its oracle;
* **absent**: a group is missing for a reason the model's library states (detection never guesses): no stem because
  the model's ``group_matcher`` names none, no head because the model has no classifier;
* **wrong**: a group disagrees with its oracle, or the model fails to build or detect (the sweep exits 1).

A row may also be **skipped** with its reason (a library not installed, a Hugging Face default config that
transformers itself cannot build); skipped rows are listed, never counted as wrong.

The same rows give the terminal report (:func:`report`) and a section of the coverage page (:func:`section_markdown`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["STATUSES", "Row", "row", "Section", "report", "exit_code", "versions", "section_markdown",
           "update_page", "page_sections", "PAGE_HEADER"]

STATUSES = ("right", "absent", "wrong")


@dataclass(frozen=True)
class Row:
    """One model (or one sample) of a sweep."""

    label: str  # the summary line it counts on: "timm", "smp", "transformers"
    model: str  # the model's name in its library
    status: str  # "right", "absent", "wrong" or "skipped"
    reasons: tuple[str, ...] = ()  # the miss in words: what disagrees (wrong), why nothing is there (absent, skipped)

    def line(self) -> str:
        """The miss as one line: ``absent: caformer_s18: no stem: timm gives it no group_matcher``."""
        return f"{self.status}: {self.model}: {'; '.join(self.reasons)}"


def row(label: str, model: str, absent: Sequence[str] = (), wrong: Sequence[str] = ()) -> Row:
    """A row that is wrong when anything disagrees, else absent when a group is documented missing, else right."""
    status = "wrong" if wrong else "absent" if absent else "right"
    return Row(label, model, status, (*wrong, *absent))


@dataclass
class Section:
    """One source's rows and what the coverage page says about them."""

    key: str  # the section's marker on the page: "timm", "timm-features", "libraries"
    title: str  # its heading
    command: str  # the command that regenerates it
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # further figures (a check per row, forward order on a sample)
    seconds: float = 0.0  # how long the sweep took
    packages: tuple[str, ...] = ("torch",)  # the packages whose versions the page states
    about: str = ""  # what the oracles check, in a sentence or two


def _labels(rows: Iterable[Row]) -> list[str]:
    return list(dict.fromkeys(r.label for r in rows))


def _counts(rows: Sequence[Row], label: str) -> str:
    mine = [r for r in rows if r.label == label]
    counts = ", ".join(f"{sum(r.status == s for r in mine)} {s}" for s in STATUSES)
    skipped = sum(r.status == "skipped" for r in mine)
    return f"{label}: {counts}" + (f" ({skipped} skipped)" if skipped else "")


def report(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """Per label, ``label: R right, A absent, W wrong``, then each miss on a line of its own; then the notes."""
    lines = []
    for label in _labels(rows):
        lines.append(_counts(rows, label))
        lines += [f"  {r.line()}" for r in rows if r.label == label and r.status != "right"]
    return "\n".join(lines + [f"  {note}" for note in notes])


def exit_code(rows: Iterable[Row]) -> int:
    """1 when any row is wrong, else 0 (absent and skipped rows are documented, not failures)."""
    return 1 if any(r.status == "wrong" for r in rows) else 0


def versions(packages: Iterable[str]) -> str:
    """``torch 2.14.1, timm 1.0.31, ...`` for the installed packages among ``packages`` (Python first)."""
    found = [f"Python {platform.python_version()}"]
    for name in packages:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_markdown(section: Section, today: datetime.date | None = None) -> str:
    """The section of the coverage page: heading, command, date and versions, a table of the counts per label,
    then the misses grouped by reason (a model per line in the terminal; here a reason per line)."""
    today = today or datetime.date.today()
    lines = [f"<!-- sweep: {section.key} -->", f"## {section.title}", "",
             f"`{section.command}`: measured {today.isoformat()} in {section.seconds:.0f} s with "
             f"{versions(section.packages)}.", *(["", section.about] if section.about else []), "",
             "| sweep | models | right | absent | wrong |", "| --- | ---: | ---: | ---: | ---: |"]
    for label in _labels(section.rows):
        mine = [r for r in section.rows if r.label == label and r.status != "skipped"]
        lines.append(f"| {label} | {len(mine)} | " + " | ".join(str(sum(r.status == s for r in mine))
                                                               for s in STATUSES) + " |")
    for note in section.notes:
        lines += ["", note]
    for status in (*STATUSES[1:], "skipped"):
        misses = [r for r in section.rows if r.status == status]
        if not misses:
            continue
        lines += ["", f"{status.capitalize()} ({len(misses)}):", ""]
        by_reason: dict[str, list[str]] = {}
        for r in misses:
            by_reason.setdefault("; ".join(r.reasons), []).append(f"{r.label}/{r.model}" if len(_labels(
                section.rows)) > 1 else r.model)
        lines += [f"- {', '.join(f'`{m}`' for m in models)}: {_cell(reason)}" for reason, models in by_reason.items()]
    return "\n".join(lines + [f"<!-- end: {section.key} -->"])


PAGE_HEADER = """# Coverage: detected groups against their oracles

Generated by `python tools/sweep.py SOURCE --markdown docs/coverage.md` (each run rewrites its own section; do not
edit by hand). Each model is **right** (every group agrees with its oracle), **absent** (a group is missing for a
reason its library states: detection never guesses) or **wrong** (a group disagrees with its oracle, or the model
fails to build or detect; the sweep exits 1). The oracles live in [`tools/oracles/`](../tools/oracles/) and are
shared with the tests: each reads the answer off the model or its library (the classifier, timm's
`get_classifier()` and `reset_classifier()`, the order modules run on a real input, a library's own freeze
function), never off detection.

The sweeps run from a clone of the repository (they are the project's checks, not part of the installed
package):

```bash
python tools/sweep.py torchvision               # every torchvision model, all tasks (about a minute)
python tools/sweep.py timm --family-sample      # one timm model per family (about 2 minutes)
python tools/sweep.py timm                      # every timm classifier (10 to 15 minutes on 2 cores)
python tools/sweep.py timm --features-only      # the same as features_only backbones (15 to 30 minutes)
python tools/sweep.py hf                        # transformers' classification architectures (30 s)
python tools/sweep.py libraries                 # smp, ultralytics, diffusers, torchvision's extractors (2 min)
python tools/sweep.py multipart                 # Hugging Face and open_clip models of several parts (3 min)
python tools/sweep.py timm --models resnet18 caformer_s18   # named models only; prints, writes no page
```

Each prints its counts per source and each miss on one line, in words, and exits 1 only when something is
wrong. Two decisions it makes: VOLO's `head` holds `head` and `aux_head` (timm's `get_classifier()` names
`head` alone, but its `reset_classifier` replaces both and `pretrained_cfg["classifier"]` names both: a head
equal to either of timm's notions is right); a Hugging Face architecture whose default config transformers
itself cannot build (an optional library missing, such as detectron2 or natten) is skipped with its reason,
never counted.
"""

_SECTION = re.compile(r"<!-- sweep: (?P<key>[\w-]+) -->\n.*?<!-- end: (?P=key) -->", re.S)


def page_sections(text: str) -> dict[str, str]:
    """The page's sections by key, each from its start marker to its end marker."""
    return {m["key"]: m[0] for m in _SECTION.finditer(text)}


def update_page(text: str, sections: Sequence[Section], order: Sequence[str],
                today: datetime.date | None = None) -> str:
    """The page with each of ``sections`` rewritten in place (added in ``order`` where missing); the other
    sections as they were."""
    found = page_sections(text) if text.strip() else {}
    found.update({s.key: section_markdown(s, today) for s in sections})
    keys = [k for k in order if k in found] + [k for k in found if k not in order]
    return PAGE_HEADER + "\n" + "\n\n".join(found[k] for k in keys) + "\n"
