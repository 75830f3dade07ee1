"""Fixtures for the plugin's own tests.

Every test here runs pytest *inside* pytest (``pytester``) against the real
QEMU on this machine; nothing is mocked. The inner runs are subprocesses so
that signal handlers, atexit hooks and the process registry of the inner
session are really separate from the outer one. Plain helpers live in
``helpers.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import FILENAME, LEAKY_ENV, QEMU10_DIR, REAL, InnerRun


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything here needs the system QEMU; say so once, clearly, instead of
    # failing dozens of inner runs in confusing ways.
    missing = [FILENAME[r] for r in ("system", "img", "io") if not REAL[r]]
    if missing:
        skip = pytest.mark.skip(reason=f"needs QEMU installed on PATH (missing: {', '.join(missing)}; "
                                       f"Debian packages qemu-system-x86, qemu-utils)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LEAKY_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> InnerRun:
    """An inner pytest project using the plugin, with helpers to run it."""
    return InnerRun(pytester, monkeypatch)


@pytest.fixture
def qemu10() -> Path:
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR} (scripts/fetch-qemu-build.sh; "
                    f"or set QB_TEST_QEMU10)")
    return QEMU10_DIR


