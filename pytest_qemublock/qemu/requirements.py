"""The ``qemu_requires`` marker: skip with a precise reason when a build lacks something."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from .build import SPEC_BY_ROLE, QemuBuild
from .capabilities import Capabilities


def missing_requirement(build: QemuBuild, caps: Callable[[], Capabilities], *, command: str | None = None,
                        feature: str | None = None, driver: str | None = None,
                        binary: str | None = None, accel: str | None = None) -> str | None:
    """Why *build* cannot run a case needing these things, or None if it can."""
    if binary is not None and not build.has(binary):
        spec = SPEC_BY_ROLE[binary]
        return (f"build {build.name} has no {spec.filename} ({build.missing.get(binary)}; "
                f"Debian package {spec.debian_package})")
    if command is not None and not caps().has_command(command):
        return f"build {build.name} (QEMU {build.version_str}) has no QMP command {command}"
    if feature is not None:
        where, _, name = feature.partition(":")
        if not caps().has_feature(where, name):
            return f"build {build.name} (QEMU {build.version_str}) lacks QAPI feature {name} on {where}"
    if driver is not None and not caps().driver_loads(driver):
        why = caps().driver_errors.get(driver) or "not probed"
        return (f"build {build.name}: block driver {driver} does not load ({why}); "
                f"install Debian package qemu-block-extra")
    if accel is not None and accel not in caps().accelerators:
        return f"build {build.name} has no accelerator {accel}"
    return None


def check_requirements(node: pytest.Item, build: QemuBuild, caps: Callable[[], Capabilities]) -> None:
    for mark in node.iter_markers("qemu_requires"):
        reason = missing_requirement(build, caps, **mark.kwargs)
        if reason:
            pytest.skip(reason)
