"""What one test's helpers share, in one object.

QemuFactory, Tools, the storages and the servers all need the build under
test, the process registry, the test's evidence and the scaled timeouts;
passing them one by one made every new need a signature change through
four layers. The fixtures build one :class:`RunContext` per test and hand
it down. It lives in the qemu layer so that storage/ and backends/ can
import it without importing upward.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..evidence import TestEvidence
from ..host.process import ProcessRegistry
from .build import QemuBuild
from .capabilities import Capabilities
from .instance import Timeouts


@dataclass
class RunContext:
    """The build, its capabilities, the process registry, the evidence, the timeouts
    and the directories of one test (or of one module's shared targets)."""

    build: QemuBuild
    caps: Capabilities
    registry: ProcessRegistry
    evidence: TestEvidence
    timeouts: Timeouts
    #: a short, private directory for unix sockets (AF_UNIX paths are limited)
    sockdir: Path

    @property
    def workdir(self) -> Path:
        """The work dir of this test: images, storages, logs."""
        return self.evidence.workdir

    @property
    def accel(self) -> str:
        """The accelerator QEMUs of this build start with (``kvm``, ``tcg``, ``qtest``)."""
        return self.caps.accel

    def with_evidence(self, evidence: TestEvidence) -> RunContext:
        """The same context logging into *evidence* (a shared target's own)."""
        return RunContext(self.build, self.caps, self.registry, evidence, self.timeouts, self.sockdir)
