"""Backends: how a suite gets a protocol node on writable or read-only storage.

A backend turns (image recipe, storage kind) into a :class:`Target`: the
protocol-node options QEMU should use, the wrapper to launch QEMU with, and
whatever servers that needs. Suites only talk to targets, so a new protocol
(http, ssh, iscsi) is one more :class:`Backend` here and no suite changes.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..qemu.build import QemuBuild
from ..storage.local import StorageUnavailable
from ..host.namespace import NamespaceError
from ..host import sandbox
from .server import ServerError
from ..storage.images import Image, ImageFactory, Tools
from ..qemu.instance import QemuInstance, Wrapper
from .server import Server, ServerContext
from ..storage.local import Storage, make_storage, unavailable_reason, unprivileged_cannot_reach

#: storage kinds: "rw" is writable; every other kind refuses writes
READONLY_KINDS = ("ro", "erofs", "eacces")


@dataclass
class Target:
    """A protocol node a suite can open, and how to observe it."""

    backend: str
    storage: str
    driver: str
    image: Image
    options: dict[str, Any]
    wrapper: Wrapper = field(default_factory=Wrapper)
    fd_path: Path | None = None  # the file QEMU opens (file backend), for fdinfo
    error_text: str | None = None  # strerror of a refused read-write open (file backend)
    server: Server | None = None
    storage_obj: Storage | None = None
    drive_file: str | None = None  # ``-drive file=`` value (a URI), if the protocol has one

    @property
    def readonly(self) -> bool:
        return self.storage in READONLY_KINDS

    def node(self, node_name: str, **extra: Any) -> dict[str, Any]:
        """Options of the protocol node named *node_name* (extra keys such as read-only)."""
        return {**self.options, "node-name": node_name, **extra}

    def make_writable(self) -> None:
        """Let the storage accept writes from now on (file backends only)."""
        if self.storage_obj is None or self.storage == "rw":
            raise NotImplementedError(f"{self.backend}-{self.storage} cannot be flipped")
        self.storage_obj.make_writable()

    def make_readonly(self) -> None:
        if self.storage_obj is None or self.storage == "rw":
            raise NotImplementedError(f"{self.backend}-{self.storage} cannot be flipped")
        self.storage_obj.make_readonly()

    def describe(self) -> str:
        return f"{self.backend}-{self.storage}"


class Backend:
    """Base class: subclasses set the class attributes and implement :meth:`provide`."""

    name = ""
    driver = ""
    storages: tuple[str, ...] = ()
    #: a read-write open of its read-only storages degrades to read-only under
    #: auto-read-only=on (False: the driver has no such fallback, e.g. block/ssh.c),
    #: static so that suites can select their cases at collection time
    degrades = True

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        """Why this backend cannot run here (a skip reason that says what to install)."""
        return None

    def provide(self, ctx: "Provisioner", recipe: str, storage: str) -> Target:
        raise NotImplementedError


class FileBackend(Backend):
    name = "file"
    driver = "file"
    storages = ("rw", "erofs", "eacces")

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        reason = unavailable_reason(storage)
        if reason is None and storage == "eacces":
            reason = unprivileged_cannot_reach(build.path("system"), executable=True)
        return reason

    def provide(self, ctx: "Provisioner", recipe: str, storage: str) -> Target:
        st = ctx.storage(storage)
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        if storage != "rw":
            st.make_readonly()  # eacces: chmod the files just created
        path = st.qemu_path(img.path)
        return Target(self.name, storage, "file", img, {"driver": "file", "filename": str(path)},
                      wrapper=st.wrapper, fd_path=path, error_text=st.error_text, storage_obj=st,
                      drive_file=str(path))


class NbdBackend(Backend):
    """One NBD server kind over one transport, with a read-only or writable export."""

    driver = "nbd"
    storages = ("rw", "ro")

    def __init__(self, server: str, transport: str,
                 start: Callable[..., Any], needs: Callable[[QemuBuild], str | None]) -> None:
        self.name = f"nbd-{server}-{transport}"
        self.server = server
        self.transport = transport
        self._start = start
        self._needs = needs

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        return self._needs(build)

    def provide(self, ctx: "Provisioner", recipe: str, storage: str) -> Target:
        st = ctx.storage("rw")
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        try:
            server = self._start(ctx, img.path, readonly=(storage == "ro"), transport=self.transport)
        except (ServerError, NamespaceError) as e:
            raise AssertionError(f"{self.name}: server did not start: {e}") from None
        ctx.servers.append(server)
        return Target(self.name, storage, "nbd", img, server.blockdev_options(), server=server,
                      drive_file=server.uri())


def _needs_binary(role: str, package: str) -> Callable[[QemuBuild], str | None]:
    def check(build: QemuBuild) -> str | None:
        if not build.has(role):
            return f"build {build.name} has no {role} binary (Debian package {package})"
        return None
    return check


def _needs_nbdkit(build: QemuBuild) -> str | None:
    return None if shutil.which("nbdkit") else "nbdkit is not installed (Debian package nbdkit)"


def _nbd_backends() -> list[Backend]:
    from . import nbd

    def qemu_export(ctx: "Provisioner", image: Path, *, readonly: bool, transport: str) -> Any:
        return nbd.start_qemu_export(ctx.server_ctx, image, readonly=readonly, transport=transport,
                                     accel=ctx.accel)

    def adapt(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda ctx, image, **kw: fn(ctx.server_ctx, image, **kw)

    return [
        NbdBackend("qemu-nbd", "unix", adapt(nbd.start_qemu_nbd), _needs_binary("nbd", "qemu-utils")),
        NbdBackend("qemu-nbd", "tcp", adapt(nbd.start_qemu_nbd), _needs_binary("nbd", "qemu-utils")),
        NbdBackend("qsd", "unix", adapt(nbd.start_qsd_export), _needs_binary("qsd", "qemu-system-common")),
        NbdBackend("qsd", "tcp", adapt(nbd.start_qsd_export), _needs_binary("qsd", "qemu-system-common")),
        NbdBackend("nbdkit", "unix", adapt(nbd.start_nbdkit), _needs_nbdkit),
        NbdBackend("qemu-export", "unix", qemu_export, lambda b: None),
    ]


#: Every backend, by name. Other protocols register here (see docs/writing-suites.md).
REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    REGISTRY[backend.name] = backend
    return backend


for _b in [FileBackend(), *_nbd_backends()]:
    register(_b)


def describe_backends(build: QemuBuild) -> list[str]:
    """One line per backend-storage pair: how to select it and whether it can run here."""
    lines = [f"{'backend-storage':<28} {'driver':<7} status (build {build.name})"]
    for name, b in REGISTRY.items():
        for st in b.storages:
            reason = b.unavailable(build, st)
            lines.append(f"{name + '-' + st:<28} {b.driver:<7} {'ok' if reason is None else 'skipped: ' + reason}")
    return lines


class Provisioner:
    """Per-test owner of storages and servers created for targets."""

    def __init__(self, build: QemuBuild, accel: str, tools: Tools, server_ctx: ServerContext,
                 make_storage_fn: Callable[[str], Storage]) -> None:
        self.build = build
        self.accel = accel
        self.tools = tools
        self.server_ctx = server_ctx
        self._make_storage = make_storage_fn
        self.storages: dict[str, Storage] = {}
        self.servers: list[Server] = []
        #: probed Capabilities of the build (set by the ``targets`` fixture), for
        #: backends whose QEMU driver is a loadable module (http, ssh, iscsi)
        self.caps: Any = None
        #: the module's TargetPool (set by the ``targets`` fixture), for shared()
        self.pool: Any = None

    def storage(self, kind: str) -> Storage:
        if kind not in self.storages:
            self.storages[kind] = self._make_storage(kind)
        return self.storages[kind]

    def target(self, backend: str, storage: str, recipe: str = "raw") -> Target:
        """Provide *recipe* through *backend* on *storage*; skips if the host cannot."""
        import pytest

        try:
            b = REGISTRY[backend]
        except KeyError:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(REGISTRY)}") from None
        if storage not in b.storages:
            raise ValueError(f"backend {backend} has no storage {storage!r} ({', '.join(b.storages)})")
        reason = b.unavailable(self.build, storage)
        if not reason and b.name != "file" and getattr(b, "transport", "tcp") == "tcp":  # trust
            reason = sandbox.loopback_shared()
        if reason:
            pytest.skip(reason)
        try:
            return b.provide(self, recipe, storage)
        except StorageUnavailable as e:
            pytest.skip(str(e))

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


def new_provisioner(build: QemuBuild, accel: str, tools: Tools, server_ctx: ServerContext) -> Provisioner:
    ev, reg, timeouts = server_ctx.evidence, server_ctx.registry, server_ctx.timeouts
    workdir = ev.workdir

    def mk(kind: str) -> Storage:
        return make_storage(kind, workdir / f"st-{kind}", reg, ev, timeouts)

    return Provisioner(build, accel, tools, server_ctx, mk)


# -- http (nginx), ssh (sshd), iscsi (tgtd) ------------------------------------------
# Debian builds these QEMU drivers as modules (package qemu-block-extra); a
# build whose module does not load skips them, as probed (probe.MODULE_DRIVERS).


def _skip_unless_driver_loads(ctx: Provisioner, driver: str) -> None:
    import pytest

    caps = ctx.caps
    if caps is not None and not caps.driver_loads(driver):
        pytest.skip(f"build {ctx.build.name}: QEMU's {driver} driver does not load "
                    f"({caps.driver_errors.get(driver, 'not probed')}); install qemu-block-extra")


def _server_started(name: str, start: Callable[[], Any]) -> Any:
    try:
        return start()
    except (ServerError, NamespaceError) as e:
        raise AssertionError(f"{name}: server did not start: {e}") from None


def _needs_root(what: str) -> str | None:
    import os

    if os.geteuid() != 0:
        return f"{what} needs root (its server runs in a private mount namespace)"
    return None


class HttpBackend(Backend):
    """nginx serving the image; QEMU's curl driver. HTTP has no writes: storage "ro" only."""

    name = "http"
    driver = "http"
    storages = ("ro",)

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        from .http import NGINX_PACKAGE, nginx_binary

        if nginx_binary() is None:
            return f"nginx is not installed (Debian package {NGINX_PACKAGE})"
        return None

    def provide(self, ctx: Provisioner, recipe: str, storage: str) -> Target:
        from .http import start_nginx

        _skip_unless_driver_loads(ctx, self.driver)
        st = ctx.storage("rw")
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        server = _server_started(self.name, lambda: start_nginx(ctx.server_ctx, st.directory, img.path))
        ctx.servers.append(server)
        return Target(self.name, storage, self.driver, img, server.blockdev_options(img.path),
                      server=server, drive_file=server.url(img.path))


class SshBackend(Backend):
    """sshd + ssh-agent; "ro" serves sftp with ``internal-sftp -R``."""

    name = "ssh"
    driver = "ssh"
    storages = ("rw", "ro")
    degrades = False  # block/ssh.c opens O_RDWR and fails: no auto-read-only fallback

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        from .ssh import SSH_PACKAGE, missing_tools

        missing = missing_tools()
        if missing:
            return (f"ssh backend needs {', '.join(missing)} (Debian packages {SSH_PACKAGE}, "
                    f"openssh-client, util-linux)")
        return _needs_root("ssh backend")

    def provide(self, ctx: Provisioner, recipe: str, storage: str) -> Target:
        from .ssh import start_sshd

        _skip_unless_driver_loads(ctx, self.driver)
        st = ctx.storage("rw")
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        server = _server_started(self.name, lambda: start_sshd(ctx.server_ctx, readonly=(storage == "ro")))
        ctx.servers.append(server)
        return Target(self.name, storage, self.driver, img, server.blockdev_options(img.path),
                      wrapper=server.wrapper, server=server, drive_file=server.uri(img.path))


class IscsiBackend(Backend):
    """tgtd exporting the image as LUN 1; "ro" is a ``readonly=1`` (write-protected) LUN."""

    name = "iscsi"
    driver = "iscsi"
    storages = ("rw", "ro")

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        from .iscsi import TGT_PACKAGE, missing_tools

        missing = missing_tools()
        if missing:
            return f"iscsi backend needs {', '.join(missing)} (Debian packages {TGT_PACKAGE}, util-linux)"
        return _needs_root("iscsi backend")

    def provide(self, ctx: Provisioner, recipe: str, storage: str) -> Target:
        from .iscsi import start_tgtd

        _skip_unless_driver_loads(ctx, self.driver)
        st = ctx.storage("rw")
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        server = _server_started(self.name, lambda: start_tgtd(ctx.server_ctx, img.path,
                                                                readonly=(storage == "ro")))
        ctx.servers.append(server)
        return Target(self.name, storage, self.driver, img, server.blockdev_options(),
                      server=server, drive_file=server.uri())


for _b in [HttpBackend(), SshBackend(), IscsiBackend()]:
    register(_b)
