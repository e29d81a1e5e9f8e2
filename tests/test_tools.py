"""The project's own checks under tools/: they run, and they report what the tests assert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.slow
def test_ecosystem_report_finds_nothing_frozen_moved():
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(TOOLS / "ecosystem.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = out.stdout.splitlines()[1:-1]
    assert len(rows) >= 15 and all(row.split()[-1] == "0" and int(row.split()[-2]) > 0 for row in rows)
    assert out.stdout.splitlines()[-1] == "ok: nothing frozen moved"
