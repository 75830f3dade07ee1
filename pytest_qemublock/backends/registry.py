"""The backends a run knows, by name.

Filled at configure time from the ``pytest_qemublock_backends`` hook
(:mod:`pytest_qemublock.hookspecs`): the built-in backends come through the
hook implementation below, a third-party plugin or conftest adds its own the
same way, so ``--backend``, ``--qb-list-backends``, ``matrix.backend_storages()``
and the suites see them all.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import QemuBlockError
from ..qemu.build import QemuBuild
from .base import Backend
from .drivers import DRIVERS, Driver, facts
from .file import FileBackend
from .http import HttpBackend
from .iscsi import IscsiBackend
from .nbd import nbd_backends
from .ssh import SshBackend

if TYPE_CHECKING:
    import pytest

#: Every backend, by name, in the order the hook returned them (built-ins first).
REGISTRY: dict[str, Backend] = {}


class BackendRegistryError(QemuBlockError):
    """A backend from the hook cannot be registered (name clash, no driver facts)."""


def builtin_backends() -> list[Backend]:
    return [FileBackend(), *nbd_backends(), HttpBackend(), SshBackend(), IscsiBackend()]


def pytest_qemublock_backends(config: pytest.Config) -> list[Backend]:
    """The built-in backends (this module is registered as a plugin by the plugin)."""
    return builtin_backends()


def fill(backends: Iterable[Backend]) -> None:
    """Replace the registry's content by *backends*; a name given twice is an error."""
    known: dict[str, Backend] = {}
    for b in backends:
        if not b.name or b.name in known:
            other = f" clashes with {known[b.name].describe()}" if b.name in known else " has no name"
            raise BackendRegistryError(f"backend {b.name!r} of {b.describe()}{other}; "
                                       f"pick another name (known: {', '.join(known)})")
        if b.driver not in DRIVERS and any(st != "rw" for st in b.storages):
            # The expectations of read-only storage come from the driver's facts.
            raise BackendRegistryError(
                f"backend {b.name!r} of {b.describe()} has read-only storages but QEMU driver "
                f"{b.driver!r} has no entry in pytest_qemublock/backends/drivers.py")
        known[b.name] = b
    REGISTRY.clear()
    REGISTRY.update(known)


def fill_from_hook(results: list[list[Backend]]) -> None:
    """:func:`fill` from what the ``pytest_qemublock_backends`` implementations returned.

    pluggy calls the last registered implementation first; reversed, the
    built-ins (registered with the plugin) come first and the ids keep their order.
    """
    fill(b for found in reversed(results) for b in found)


def get(name: str) -> Backend:
    """The backend named *name*."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}") from None


def driver_of(name: str) -> Driver:
    """The facts of the QEMU driver behind backend *name* (e.g. ``driver_of(b).degrades``)."""
    return facts(get(name).driver)


def describe_backends(build: QemuBuild) -> list[str]:
    """One line per backend-storage pair: how to select it and whether it can run here."""
    lines = [f"{'backend-storage':<28} {'driver':<7} status (build {build.name})"]
    for name, b in REGISTRY.items():
        for st in b.storages:
            reason = b.unavailable(build, st)
            status = "ok" if reason is None else "skipped: " + reason
            lines.append(f"{name + '-' + st:<28} {b.driver:<7} {status}")
    return lines
