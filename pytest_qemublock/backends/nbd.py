"""NBD: the servers (qemu-nbd, qemu-storage-daemon, nbdkit, an export of a second
QEMU) and one :class:`NbdBackend` per server and transport, for QEMU's ``nbd`` driver.

All of them export the image's bytes (format ``raw``) so the QEMU under test
runs the format driver itself, exactly as with a local file.
"""
from __future__ import annotations

import json
import shutil
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..host.listeners import Listener, recv_until, socket_activation
from ..host.process import ManagedProcess, ProcessRegistry
from ..qemu.build import QemuBuild
from ..qemu.instance import QemuInstance, Wrapper, launch
from .base import Backend, ProvideContext, Target, new_image, started
from .server import Server, ServerContext, ServerError

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
_NBD_OPT_ABORT = 2
_NBD_FLAG_C_FIXED_NEWSTYLE = 1
_NBD_FLAG_C_NO_ZEROES = 2


#: clients a qemu-nbd (-e) or qsd (--nbd-server max-connections) server of ours accepts at once
MAX_CONNECTIONS = 16

class NbdServer(Server):
    """A running NBD server exporting one image."""

    def __init__(self, kind: str, proc: ManagedProcess, registry: ProcessRegistry,
                 listener: Listener | None, readonly: bool, export: str,
                 owner: QemuInstance | None = None) -> None:
        super().__init__(proc, registry, listener, readonly)
        self.kind = kind
        self.export = export
        self._owner = owner  # a QemuInstance for the qemu-export server

    def blockdev_options(self) -> dict[str, Any]:
        """Protocol-node options for QEMU's nbd driver (without node-name)."""
        opts: dict[str, Any] = {"driver": "nbd", "server": self.address}
        if self.export:
            opts["export"] = self.export
        return opts

    @property
    def address(self) -> dict[str, Any]:
        return self.listener.qapi_address()  # type: ignore[union-attr]

    def uri(self) -> str:
        """An ``nbd://`` / ``nbd+unix://`` URI, for ``-drive file=`` and tools."""
        a = self.address
        if a["type"] == "unix":
            return f"nbd+unix:///{self.export}?socket={a['path']}"
        return f"nbd://{a['host']}:{a['port']}/{self.export}"

    def stop(self) -> None:
        if self._owner is not None:
            try:
                self._owner.shutdown()
            finally:
                if self.listener is not None:
                    self.listener.close()
            return
        super().stop()


def handshake(listener: Listener, timeout: float, who: str,
              alive: Callable[[], bool] = lambda: True) -> None:
    """Prove the server speaks NBD: read the greeting, then abort politely.

    *alive* is polled while waiting, so a server that dies fails at once
    instead of after the whole timeout.
    """
    try:
        with listener.connect(timeout) as s:
            greeting = _recv_exact(s, 18, alive, time.monotonic() + timeout)
            if greeting[:8] != NBD_MAGIC or greeting[8:16] != IHAVEOPT:
                raise ServerError(f"{who}: not an NBD newstyle greeting: {greeting!r}")
            # One write: two small ones would meet Nagle + delayed ACK (40 ms) on TCP.
            s.sendall(struct.pack(">I", _NBD_FLAG_C_FIXED_NEWSTYLE | _NBD_FLAG_C_NO_ZEROES)
                      + IHAVEOPT + struct.pack(">II", _NBD_OPT_ABORT, 0))
            try:
                _recv_exact(s, 20, alive, time.monotonic() + timeout)  # a server may also just hang up
            except (OSError, ServerError):
                pass
    except TimeoutError:
        raise ServerError(f"{who}: no NBD greeting on {listener} within {timeout:.1f}s") from None
    except OSError as e:
        raise ServerError(f"{who}: NBD handshake on {listener} failed: {e}") from None


def _recv_exact(s: socket.socket, n: int, alive: Callable[[], bool] = lambda: True,
                deadline: float | None = None) -> bytes:
    buf, why = recv_until(s, lambda b: len(b) >= n, alive, deadline)
    if why == "exited":
        raise ServerError("the server exited")
    if why == "timeout":
        raise TimeoutError(f"{len(buf)} of {n} bytes")
    if why == "eof":
        raise ServerError(f"connection closed after {len(buf)} of {n} bytes")
    return buf[:n]


def _ready(ctx: ServerContext, server: NbdServer, who: str) -> NbdServer:
    try:
        handshake(server.listener, ctx.timeouts.launch, who, server.proc.alive)  # type: ignore[arg-type]
    except ServerError as e:
        server.stop()
        if (server.proc.returncode or 0) >= 0:  # exited refusing: the caller's outcome; a signal is a crash
            server.proc.death_noted = "refused to start (ServerError)"
        raise ServerError(f"{e}\n  command: {server.proc.command_line()}\n"
                          f"  status: {server.proc.describe()}\n"
                          f"  stderr: {server.proc.stderr_text().strip()}") from None
    return server


def start_qemu_nbd(ctx: ServerContext, image: Path, *, readonly: bool, transport: str = "unix",
                   wrapper: Wrapper = Wrapper()) -> NbdServer:
    """``qemu-nbd [-r] -t`` on a pre-bound socket (systemd socket activation)."""
    listener = Listener(transport, ctx.sockdir, "qnbd")
    argv = [str(ctx.build.path("nbd")), "-f", "raw", "-t", "-e", str(MAX_CONNECTIONS), "-x", "e0"]
    if readonly:
        argv.append("-r")
    argv.append(str(image))
    proc = ctx.registry.spawn([*wrapper.prefix, *socket_activation(argv, listener.fd)],
                              name="qemu-nbd", log_dir=ctx.evidence.log_dir,
                              env={**ctx.build.env_for("nbd"), **wrapper.env}, pass_fds=[listener.fd],
                              program=Path(argv[0]).name)
    ctx.evidence.add_process(proc)
    listener.release()
    return _ready(ctx, NbdServer("qemu-nbd", proc, ctx.registry, listener, readonly, "e0"), "qemu-nbd")


def start_qsd_export(ctx: ServerContext, image: Path, *, readonly: bool, transport: str = "unix",
                     wrapper: Wrapper = Wrapper(), writable: str | None = "") -> NbdServer:
    """``qemu-storage-daemon --nbd-server addr.type=fd`` exporting a raw node.

    *writable*: the export's ``writable=`` as given ("on"/"off"; None: left out, to see the
    default); "" (the default) says what *readonly* says.
    """
    listener = Listener(transport, ctx.sockdir, "qsd")
    node = {"driver": "raw", "node-name": "n0", "read-only": readonly,
            "file": {"driver": "file", "filename": str(image), "read-only": readonly}}
    if writable == "":
        writable = "off" if readonly else "on"
    export = "type=nbd,id=e0,node-name=n0,name=e0" + ("" if writable is None else f",writable={writable}")
    argv = [str(ctx.build.path("qsd")),
            "--blockdev", json.dumps(node),
            "--nbd-server", f"addr.type=fd,addr.str={listener.fd},max-connections={MAX_CONNECTIONS}",
            "--export", export]
    proc = ctx.registry.spawn([*wrapper.prefix, *argv], name="qsd-nbd", log_dir=ctx.evidence.log_dir,
                              env={**ctx.build.env_for("qsd"), **wrapper.env}, pass_fds=[listener.fd],
                              program=Path(argv[0]).name)
    ctx.evidence.add_process(proc)
    listener.release()
    return _ready(ctx, NbdServer("qsd", proc, ctx.registry, listener, readonly, "e0"), "qemu-storage-daemon")


def start_nbdkit(ctx: ServerContext, image: Path, *, readonly: bool, transport: str = "unix",
                 wrapper: Wrapper = Wrapper()) -> NbdServer:
    """``nbdkit -f [-r] file`` on a pre-bound socket (nbdkit supports socket activation)."""
    nbdkit = shutil.which("nbdkit")
    if nbdkit is None:
        raise ServerError("nbdkit is not installed (Debian package nbdkit)")
    listener = Listener(transport, ctx.sockdir, "kit")
    argv = [nbdkit, "-f", "--exportname", "e0"]
    if readonly:
        argv.append("-r")
    argv += ["file", f"file={image}"]
    proc = ctx.registry.spawn([*wrapper.prefix, *socket_activation(argv, listener.fd)],
                              name="nbdkit", log_dir=ctx.evidence.log_dir, env=dict(wrapper.env),
                              pass_fds=[listener.fd], program="nbdkit")
    ctx.evidence.add_process(proc)
    listener.release()
    # nbdkit serves every export name; "e0" keeps the URI shape of the others.
    return _ready(ctx, NbdServer("nbdkit", proc, ctx.registry, listener, readonly, "e0"), "nbdkit")


def start_qemu_export(ctx: ServerContext, image: Path, *, readonly: bool, accel: str,
                      transport: str = "unix", wrapper: Wrapper = Wrapper()) -> NbdServer:
    """A second qemu-system exporting the image with ``nbd-server-start`` + ``block-export-add``."""
    from ..qemu.qmp import QmpError

    vm = launch("system", ctx.build, ["-blockdev", json.dumps(
        {"driver": "raw", "node-name": "n0", "read-only": readonly,
         "file": {"driver": "file", "filename": str(image), "read-only": readonly}})],
        accel=accel, registry=ctx.registry, evidence=ctx.evidence, timeouts=ctx.timeouts,
        wrapper=wrapper, name="qemu-export")
    listener = Listener(transport, ctx.sockdir, "qexp")
    # The pre-bound socket goes to QEMU over QMP (SCM_RIGHTS + getfd): no
    # window in which another worker could take the port.
    vm.qmp.pass_fd(listener.fd, "nbdlisten")
    listener.release()
    res = vm.try_execute("nbd-server-start", {"addr": {"type": "fd", "data": {"str": "nbdlisten"}},
                                              "max-connections": 16})
    if isinstance(res, QmpError):
        vm.shutdown()
        listener.close()
        raise ServerError(f"qemu-export: nbd-server-start failed: {res}")
    vm.execute("block-export-add", {"type": "nbd", "id": "e0", "node-name": "n0", "name": "e0",
                                    "writable": not readonly})
    server = NbdServer("qemu-export", vm.proc, ctx.registry, listener, readonly, "e0", owner=vm)
    return _ready(ctx, server, "qemu-export")


# -- the backends -------------------------------------------------------------------


class NbdBackend(Backend):
    """One NBD server kind over one transport, with a read-only or writable export."""

    driver = "nbd"
    storages = ("rw", "ro")

    def __init__(self, server: str, transport: str,
                 start: Callable[[ProvideContext, Path, bool, str], NbdServer],
                 needs: Callable[[QemuBuild], str | None]) -> None:
        self.name = f"nbd-{server}-{transport}"
        self.server = server
        self.transport = transport
        self.listens_on_tcp = transport == "tcp"
        self._start = start
        self._needs = needs

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        return self._needs(build)

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        img = new_image(ctx, recipe)
        server = started(ctx, self.name, lambda: self._start(ctx, img.path, storage == "ro", self.transport))
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


def _server(fn: Callable[..., NbdServer]) -> Callable[[ProvideContext, Path, bool, str], NbdServer]:
    return lambda ctx, image, readonly, transport: fn(ctx.server_ctx, image, readonly=readonly,
                                                      transport=transport)


def _qemu_export(ctx: ProvideContext, image: Path, readonly: bool, transport: str) -> NbdServer:
    return start_qemu_export(ctx.server_ctx, image, readonly=readonly, transport=transport,
                             accel=ctx.accel)


def nbd_backends() -> list[Backend]:
    """Every NBD server kind over the transports it is tested on."""
    qemu_nbd, qsd = _needs_binary("nbd", "qemu-utils"), _needs_binary("qsd", "qemu-system-common")
    return [
        NbdBackend("qemu-nbd", "unix", _server(start_qemu_nbd), qemu_nbd),
        NbdBackend("qemu-nbd", "tcp", _server(start_qemu_nbd), qemu_nbd),
        NbdBackend("qsd", "unix", _server(start_qsd_export), qsd),
        NbdBackend("qsd", "tcp", _server(start_qsd_export), qsd),
        NbdBackend("nbdkit", "unix", _server(start_nbdkit), _needs_nbdkit),
        NbdBackend("qemu-export", "unix", _qemu_export, lambda b: None),
    ]
