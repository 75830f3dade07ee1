"""docs/expectations.md stays true: it is exactly what ``pytest --qb-expectations`` prints for
this project's two reference builds (Debian's 7.2 on PATH and the unpacked 10.0)."""
from __future__ import annotations

import difflib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QEMU10_DIR
from pytest_qemublock.reference.behaviour import REGENERATE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "expectations.md"
TIMEOUT = 120


def test_doc_is_generated_from_the_expectations() -> None:
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR} (scripts/fetch-qemu-build.sh; "
                    f"or set QB_TEST_QEMU10): docs/expectations.md is generated for 7.2 and 10.0")
    argv = shlex.split(REGENERATE.partition(">")[0])[1:]  # the documented command, without "> doc"
    argv = [a.replace("/var/cache/pytest-qemublock/qemu-10.0", str(QEMU10_DIR)) for a in argv]
    cmd = [sys.executable, "-m", "pytest", *argv]
    res = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, (f"{' '.join(cmd)} exited {res.returncode}:\n"
                                 f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    committed = DOC.read_text()
    diff = "".join(list(difflib.unified_diff(committed.splitlines(True), res.stdout.splitlines(True),
                                             "docs/expectations.md", "generated"))[:40])
    assert res.stdout == committed, (
        f"docs/expectations.md is not what the expectations say; regenerate it:\n  {REGENERATE}\n{diff}")
