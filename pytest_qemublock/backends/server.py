"""What all servers share: listening sockets handed over pre-bound, and the context
(:class:`~..qemu.context.RunContext`, still importable here as ``ServerContext``)."""
from __future__ import annotations

from ..errors import QemuBlockError
from ..host.listeners import Listener
from ..host.process import ManagedProcess, ProcessRegistry
from ..qemu.context import RunContext


class ServerError(QemuBlockError):
    """A protocol server (qemu-nbd, nbdkit, nginx, ...) failed to become ready."""


#: the name the servers knew the test's context by
ServerContext = RunContext


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
            self.proc.stop()  # leaves the registry once reaped
        finally:
            if self.listener is not None:
                self.listener.close()

    def describe(self) -> str:
        return f"{self.kind} {'read-only' if self.readonly else 'writable'} on {self.listener}"
