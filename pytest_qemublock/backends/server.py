"""What all servers share: listening sockets handed over pre-bound, and the context."""
from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import QemuBlockError
from ..qemu.build import QemuBuild
from ..evidence import TestEvidence
from ..qemu.instance import Timeouts
from ..host.listeners import Listener
from ..host.process import ManagedProcess, ProcessRegistry


class ServerError(QemuBlockError):
    """A protocol server (qemu-nbd, nbdkit, nginx, ...) failed to become ready."""



@dataclass
class ServerContext:
    """Everything a server needs from the session and the test."""

    build: QemuBuild
    registry: ProcessRegistry
    evidence: TestEvidence
    timeouts: Timeouts
    sockdir: Path


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
