"""The per-test owner of the storages and servers behind a suite's targets (``targets`` fixture)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pytest

from ..host import sandbox
from ..qemu.build import QemuBuild
from ..qemu.capabilities import Capabilities
from ..qemu.instance import QemuInstance
from ..storage.images import Tools
from ..storage.local import Storage, StorageUnavailable, make_storage
from . import registry
from .base import Target
from .drivers import DRIVERS
from .server import Server, ServerContext


class SharedTargets(Protocol):
    """The module's pool of shared targets (:class:`~.pool.TargetPool`, which builds
    provisioners itself: a protocol, so that neither module imports the other's class)."""

    def get(self, prov: Provisioner, backend: str, storage: str, recipe: str) -> Target: ...

    def hotplug_qemu(self, prov: Provisioner, target: Target) -> QemuInstance: ...


class Provisioner:
    """Per-test owner of storages and servers created for targets.

    *caps* are the build's probed capabilities (a backend whose QEMU driver is a
    loadable module skips where it does not load); *pool* serves :meth:`shared`.
    """

    def __init__(self, build: QemuBuild, accel: str, tools: Tools, server_ctx: ServerContext,
                 make_storage_fn: Callable[[str], Storage], caps: Capabilities,
                 pool: SharedTargets | None = None) -> None:
        self.build = build
        self.accel = accel
        self.tools = tools
        self.server_ctx = server_ctx
        self.caps = caps
        self.pool = pool
        self._make_storage = make_storage_fn
        self.storages: dict[str, Storage] = {}
        self.servers: list[Server] = []

    def storage(self, kind: str) -> Storage:
        """The test's storage of *kind*; skips (with the reason) if the host cannot make it."""
        if kind not in self.storages:
            try:
                self.storages[kind] = self._make_storage(kind)
            except StorageUnavailable as e:
                pytest.skip(str(e))
        return self.storages[kind]

    def target(self, backend: str, storage: str, recipe: str = "raw") -> Target:
        """Provide *recipe* through *backend* on *storage*; skips if the host cannot."""
        b = registry.get(backend)
        if storage not in b.storages:
            raise ValueError(f"backend {backend} has no storage {storage!r} ({', '.join(b.storages)})")
        # A TCP server without the sandbox is refused by design, whatever else it needs.
        reason = sandbox.loopback_shared() if b.listens_on_tcp else None
        reason = reason or b.unavailable(self.build, storage)
        if reason:
            pytest.skip(reason)
        self._skip_unless_driver_loads(b.driver)
        try:
            return b.provide(self, recipe, storage)
        except StorageUnavailable as e:
            pytest.skip(str(e))

    def _skip_unless_driver_loads(self, driver: str) -> None:
        facts = DRIVERS.get(driver)
        if facts is not None and facts.module and not self.caps.driver_loads(driver):
            pytest.skip(f"build {self.build.name}: QEMU's {driver} driver does not load "
                        f"({self.caps.driver_errors.get(driver, 'not probed')}); install qemu-block-extra")

    def shared(self, backend: str, storage: str, recipe: str = "raw") -> Target:
        """Like :meth:`target`, but shared with the module's other cases (see pool.py).

        Only for cases that open and close nodes: nothing may write to it,
        flip its storage or stop its server.
        """
        if self.pool is None:
            return self.target(backend, storage, recipe)
        return self.pool.get(self, backend, storage, recipe)

    def hotplug_qemu(self, target: Target) -> QemuInstance:
        """A running QEMU without nodes, shared by the module's cases on the
        :meth:`shared` *target*: ``blockdev-add`` into it, and ``blockdev-del``
        everything added before the test ends (see pool.py)."""
        if self.pool is None:
            raise RuntimeError("hotplug_qemu() needs the targets fixture's module pool")
        return self.pool.hotplug_qemu(self, target)

    def close(self) -> list[str]:
        problems = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 - report, keep cleaning
                problems.append(f"{server.describe()}: {e}")
        self.servers.clear()
        for st in self.storages.values():
            try:
                st.close()
            except Exception as e:  # noqa: BLE001
                problems.append(f"{st!r}: {e}")
        self.storages.clear()
        return problems


def new_provisioner(ctx: ServerContext, tools: Tools, pool: SharedTargets | None = None) -> Provisioner:
    """A provisioner for the test (or one module's shared targets) of *ctx*: storages
    go in its work dir; *pool* serves :meth:`Provisioner.shared`."""
    return Provisioner(ctx.build, ctx.accel, tools, ctx, lambda kind: make_storage(kind, ctx),
                       ctx.caps, pool)
