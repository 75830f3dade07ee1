"""What all servers share: listening sockets handed over pre-bound, and the context."""
from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..build import QemuBuild
from ..evidence import TestEvidence
from ..machine import Timeouts
from ..process import ManagedProcess, ProcessRegistry

_counter = itertools.count(1)


@dataclass
class ServerContext:
    """Everything a server needs from the session and the test."""

    build: QemuBuild
    registry: ProcessRegistry
    evidence: TestEvidence
    timeouts: Timeouts
    sockdir: Path


class Listener:
    """A listening socket created here and inherited by the server.

    Binding before the server starts means no port probing (no race between
    xdist workers) and no "is it listening yet" polling: the kernel queues
    connections until the server accepts them.
    """

    def __init__(self, transport: str, sockdir: Path, label: str) -> None:
        self.transport = transport
        if transport == "unix":
            self.path: Path | None = sockdir / f"{label}{os.getpid() % 1000}-{next(_counter)}.sock"
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(self.path))
            self.port = 0
        elif transport == "tcp":
            self.path = None
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Accepted sockets inherit TCP_NODELAY from the listener (Linux). QEMU's NBD
            # server sends an option reply's header and payload in separate writes and
            # sets no TCP_NODELAY itself, so with Nagle on each reply waits ~40 ms for the
            # client's delayed ACK: 85 ms of every NBD-over-TCP open were spent there.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            raise ValueError(f"unknown transport {transport!r}")
        self.sock.listen(16)
        self.sock.set_inheritable(True)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def qapi_address(self) -> dict[str, Any]:
        """The address as QEMU's ``SocketAddress`` (for ``"server": ...``)."""
        if self.transport == "unix":
            return {"type": "unix", "path": str(self.path)}
        return {"type": "inet", "host": "127.0.0.1", "port": str(self.port)}

    def connect(self, timeout: float) -> socket.socket:
        if self.transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = str(self.path)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("127.0.0.1", self.port)
        s.settimeout(timeout)
        s.connect(target)
        return s

    def release(self) -> None:
        """Close our copy once the server has inherited it.

        Then a server that dies makes connects fail at once (ECONNREFUSED)
        instead of queueing in a backlog nobody will ever accept.
        """
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.transport == "unix" else f"tcp:127.0.0.1:{self.port}"


def recv_until(s: socket.socket, done: Callable[[bytes], bool], alive: Callable[[], bool],
               deadline: float | None) -> tuple[bytes, str]:
    """Read from *s* until ``done(received)``; returns the bytes and why it stopped.

    The reason is ``"done"``, ``"eof"``, ``"exited"`` (*alive* said the server
    died: polled every 50 ms, so a dead server fails at once instead of after
    the whole timeout) or ``"timeout"`` (past *deadline*, a ``time.monotonic()``
    value; ``None`` never times out).
    """
    s.settimeout(0.05)
    buf = b""
    while not done(buf):
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            if not alive():
                return buf, "exited"
            if deadline is not None and time.monotonic() > deadline:
                return buf, "timeout"
            continue
        if not chunk:
            return buf, "eof"
        buf += chunk
    return buf, "done"


def socket_activation(argv: list[str], fd: int) -> list[str]:
    """Wrap *argv* for systemd-style socket activation (the socket on fd 3).

    ``LISTEN_PID`` must be the server's own pid, unknown before fork; a tiny
    shell moves the fd and sets it, then execs the server in place.
    """
    move = f"exec 3<&{fd} {fd}<&-; " if fd != 3 else ""  # "3<&3 3<&-" would close it
    script = f'{move}LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
    # bash, not dash: dash cannot redirect file descriptors above 9
    return ["bash", "-c", script, "bash", *argv]


class Server:
    """A running server process and how to reach it."""

    kind = "server"

    def __init__(self, proc: ManagedProcess, registry: ProcessRegistry, listener: Listener | None,
                 readonly: bool) -> None:
        self.proc = proc
        self.registry = registry
        self.listener = listener
        self.readonly = readonly

    def stop(self) -> None:
        try:
            self.proc.stop()
        finally:
            self.registry.forget(self.proc)
            if self.listener is not None:
                self.listener.close()

    def describe(self) -> str:
        return f"{self.kind} {'read-only' if self.readonly else 'writable'} on {self.listener}"
