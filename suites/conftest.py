"""The suites' scenario markers: one per module, selected with ``-m open`` etc.

Registered here, not by the plugin: scenarios are what these suites test.
``scenario/matrix.py`` recognises a scenario marker by its description's
``qemublock scenario:`` prefix and reports it as the case's ``qb.scenario``.
"""
from __future__ import annotations

import pytest

SCENARIOS = {
    "smoke": "a minimal check that the build and the harness work",
    "open": "open matrix: read-only x auto-read-only x storage x interface",
    "degrade": "auto-read-only=on degrades to read-only where storage refuses writes",
    "reopen": "blockdev-reopen between read-only and read-write",
    "dynamic": "file-posix dynamic auto-read-only: fd mode follows writers",
    "jobs": "block jobs reopening backing nodes read-write",
    "defaults": "defaults and inheritance (-drive, backing children, tools)",
    "fallback": "drivers that fall back to read-only only under auto-read-only (vvfat, bochs, cloop)",
    "snapshot": "snapshot=on: a writable temporary overlay over read-only storage",
    "hostdev": "host_device on a read-only loop device",
    "inactive": "inactive nodes (blockdev-set-active) refuse writers",
    "devices": "guest devices on a read-only node, media changed or inserted read-only or read-write",
    "extsnap": "external snapshots (blockdev-snapshot-sync, blockdev-snapshot) over read-only bases",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in SCENARIOS.items():
        config.addinivalue_line("markers", f"{name}: qemublock scenario: {text}")


def pytest_qemublock_axis_values(config: pytest.Config) -> dict[str, list[str]]:
    """What these suites use besides the registry's backends: vvfat over a host
    directory and host_device on a loop device (each in a suite of its own), and the
    formats whose read-only fallback test_fallback.py checks."""
    return {"backend": ["vvfat-dir", "hostdev-ro"], "format": ["bochs", "cloop"]}
