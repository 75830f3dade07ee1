"""Servers in a private mount namespace with a tmpfs on /run.

sshd insists on ``/run/sshd`` and tgtd puts its control socket and lock file
in ``/run/tgtd``; both paths are compiled in. Started through
:func:`private_run`, the server sees a fresh tmpfs there, the host's /run is
never written, and the tmpfs (and any other mount made inside) vanishes with
the namespace's last process. :class:`Namespace` finds every process in it,
so a stop also reaches children that left the server's process group (sshd
puts each connection in a session of its own).
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import QemuBlockError
from .process import ManagedProcess
from .procfs import command_name, mount_namespace, namespace_pids, running


class NamespaceError(QemuBlockError):
    """A process did not come up in (or left) its private mount namespace."""


def private_run(argv: Sequence[str], mkdirs: Sequence[str] = ()) -> list[str]:
    """*argv* wrapped: new mount namespace, tmpfs on /run, *mkdirs* (0755) created in it.

    ``unshare`` and ``sh`` both exec, so the spawned pid is the server's.
    """
    mk = "".join(f" && mkdir -m 755 -p {d}" for d in mkdirs)
    script = f'mount -t tmpfs -o mode=755,size=1m qemublock-run /run{mk} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            "sh", *map(str, argv)]


class Namespace:
    """The mount namespace a server runs in (identified by its ``ns/mnt`` link)."""

    def __init__(self, proc: ManagedProcess, comm: str, timeout: float) -> None:
        """Wait until *proc* runs as *comm* in a namespace other than ours.

        Until then, ``nsenter -t PID`` would enter the host's namespace (or
        the pid would still be ``unshare``/``sh``): never act on it before.
        """
        self.proc = proc
        own = mount_namespace("self")
        deadline = time.monotonic() + timeout
        while True:
            if not proc.alive():
                raise NamespaceError(f"{proc.name} exited before it ran in its mount namespace "
                                  f"({proc.describe()}): {proc.stderr_text().strip()}")
            ns = mount_namespace(proc.pid)
            if ns is not None and ns != own and command_name(proc.pid) == comm:
                self._hold(ns)
                return
            if time.monotonic() > deadline:
                raise NamespaceError(f"{proc.name} did not start in a private mount namespace "
                                  f"within {timeout:.1f}s")
            time.sleep(0.001)

    def _hold(self, ns: str) -> None:
        # Namespace inode numbers are reused as soon as a namespace dies (the
        # kernel hands out the lowest free one): holding an fd on it keeps
        # the id ours, so pids() never matches another server's namespace.
        fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        if os.readlink(f"/proc/self/fd/{fd}") != ns:  # the pid died and was reused meanwhile
            os.close(fd)
            raise NamespaceError(f"{self.proc.name} exited while its mount namespace was looked up")
        self._fd: int | None = fd
        self.id = ns

    def close(self) -> None:
        """Let the namespace go (it ends with its last process); call after :meth:`kill_all`."""
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace (a :class:`~..machine.Wrapper` prefix)."""
        return ("nsenter", "-t", str(self.proc.pid), "-m", "--")

    def path(self, inside: str) -> Path:
        """A path as the server sees it, reached from the host through ``/proc/PID/root``."""
        return Path(f"/proc/{self.proc.pid}/root") / inside.lstrip("/")

    def pids(self) -> list[int]:
        """Live processes in this namespace (the server and everything it forked)."""
        if getattr(self, "_fd", None) is None:
            raise NamespaceError("namespace already released: its id may belong to another one now")
        return namespace_pids(self.id)

    def kill_all(self, timeout: float = 5.0) -> list[int]:
        """SIGKILL every process still in the namespace; returns those that survived *timeout*."""
        deadline = time.monotonic() + timeout
        left = self.pids()
        while left:
            for pid in left:
                if mount_namespace(pid) == self.id:  # not a reused pid
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
            left = [p for p in left if running(p) and mount_namespace(p) == self.id]
        return left
