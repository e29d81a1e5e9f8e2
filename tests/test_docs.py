"""Every page under docs/ runs as shown: each Python block on its own, each output block exactly what its code
prints; every relative link resolves."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SHOWN = re.compile(r"```python\n((?:(?!```).)*)```\n```\n((?:(?!```).)*)```", re.S)
# a block that needs an optional library says so in its first import; without it the block is skipped
OPTIONAL = ("transformers", "lightning", "segmentation_models_pytorch", "open_clip", "ultralytics", "diffusers",
            "sklearn", "peft", "accelerate")


def run(code: str, where: Path) -> str:
    """Runs ``code`` in a fresh namespace (a block must define every name it uses); returns what it printed."""
    for name in OPTIONAL:
        if re.search(rf"^(?:import|from) {name}\b", code, re.M):
            pytest.importorskip(name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(where), "exec"), {"__name__": "docs"})
    return out.getvalue()


def blocks() -> list:
    params = []
    for page in PAGES:
        text = page.read_text()
        shown = dict(SHOWN.findall(text))
        for i, code in enumerate(BLOCK.findall(text), 1):
            params.append(pytest.param(page, code, shown.get(code), id=f"{page.stem}-{i}"))
    return params


@pytest.mark.parametrize("page, code, shown", blocks())
def test_every_block_runs_and_prints_what_the_page_shows(page: Path, code: str, shown: str | None):
    printed = run(code, page)
    if shown is not None:
        assert printed == shown


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path):
    text = page.read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (page.parent / path).exists(), f"{page.name}: {target}"
        elif anchor:
            assert anchor in anchors, f"{page.name}: #{anchor}"
