"""Hooks pytest-qemublock offers to other plugins and conftests.

Implement them in a plugin or in a conftest.py that pytest loads before
configure (the rootdir's, or one named with ``-p``); see docs/writing-suites.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .backends.base import Backend


@pytest.hookspec
def pytest_qemublock_backends(config: pytest.Config) -> list[Backend]:
    """Backends to add to the registry (every implementation's lists are joined).

    Called once at configure time, in the controller and in every xdist
    worker. A backend's name must be unique among all implementations; a
    backend with read-only storages needs its QEMU driver's entry in
    ``pytest_qemublock/backends/drivers.py``.
    """
    raise NotImplementedError


@pytest.hookspec
def pytest_qemublock_axis_values(config: pytest.Config) -> dict[str, list[str]]:
    """Axis values that suites use besides the registry's backends and the matrix's
    formats and interfaces, e.g. ``{"backend": ["vvfat-dir"], "format": ["bochs"]}``,
    so that ``--backend``/``--format``/``--interface`` accept them (a selector that
    matches no known value is a usage error). Every implementation's values are joined.
    """
    raise NotImplementedError
