"""What every scenario's rules share: fd modes, error texts of the block layer,
the dynamic auto-read-only capability and the expected outcome of one step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# per-driver facts, re-exported for the scenario modules
from ..backends.drivers import NBD_CANT_REOPEN_RW as NBD_CANT_REOPEN_RW
from ..backends.drivers import NBD_RO_EXPORT as NBD_RO_EXPORT
from ..backends.drivers import open_failed as open_failed
from ..qemu.capabilities import Capabilities

O_RDONLY, O_RDWR = "O_RDONLY", "O_RDWR"

# Error texts (regexes). Source: block.c bdrv_node_refresh_perm().
NODE_IS_READ_ONLY = r"Block node is read-only"


def dynamic(caps: Capabilities) -> bool:
    """file-posix keeps ``ro=false`` and switches the fd (QEMU 4.0+, 23dece19da)."""
    return caps.has_feature("BlockdevOptions.file", "dynamic-auto-read-only")


@dataclass(frozen=True)
class Expect:
    """The expected outcome of one step."""

    opens: bool
    error: str | None = None  # regex, searched in the error text
    ro: Mapping[str, bool] = field(default_factory=dict)  # node-name -> query-named-block-nodes ro
    fd: str | None = None  # access mode of QEMU's fd for the image (file backends)
    because: str = ""

    def describe(self) -> str:
        if not self.opens:
            return f"error matching /{self.error}/"
        parts = [f"{n}.ro={v}" for n, v in self.ro.items()]
        if self.fd:
            parts.append(f"fd={self.fd}")
        return "opens, " + ", ".join(parts)
