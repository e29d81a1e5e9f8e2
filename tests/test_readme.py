"""Every Python block of the README runs as shown, on its own; a block followed by an output block prints exactly that."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def run(code: str) -> str:
    """Runs ``code`` in a fresh namespace (so a block must define every name it uses); returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    return out.getvalue()


# (code, output) for every Python block followed at once by a plain block: what it prints
SHOWN = re.findall(r"```python\n((?:(?!```).)*)```\n```\n((?:(?!```).)*)```", TEXT, re.S)


def test_first_example_prints_what_the_readme_shows():
    code, shown = SHOWN[0]
    assert code == BLOCKS[0]
    assert run(code) == shown


@pytest.mark.parametrize("code, shown", SHOWN[1:], ids=[f"shown{i}" for i in range(2, len(SHOWN) + 1)])
def test_every_output_block_is_what_its_code_prints(code, shown):
    assert run(code) == shown


@pytest.mark.parametrize("code", BLOCKS[1:], ids=[f"block{i}" for i in range(2, len(BLOCKS) + 1)])
def test_every_python_block_runs_on_its_own(code):
    run(code)


def test_the_readme_has_its_sections_in_a_newcomer_s_order():
    sections = re.findall(r"^## (.+)$", TEXT, re.M)
    assert sections == ["The two commands", "A first example", "Why", "Three forms", "Groups and presets",
                        "Training loops", "What it is worth", "Documentation", "Examples"]


def test_the_readme_reads_in_ten_minutes():
    assert 250 <= len(TEXT.splitlines()) <= 350


def test_the_readme_points_to_every_docs_page():
    pages = {p.name for p in (README.parent / "docs").glob("*.md")}
    assert pages and pages <= set(re.findall(r"\(docs/([\w-]+\.md)[#)]", TEXT))


def test_ci_runs_exactly_the_readme_s_test_command():
    block = re.search(r"# run the tests.*\n(.+)\n", TEXT).group(1)
    ci = (README.parent / ".ci" / "run").read_text()
    assert block in ci.splitlines()
