"""What every scenario's rules share: fd modes, error texts of the block layer,
the dynamic auto-read-only capability and the expected outcome of one step."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from ..backends.base import Target
from ..qemu.capabilities import Capabilities

O_RDONLY, O_RDWR = "O_RDONLY", "O_RDWR"

# Error texts (regexes). Sources: util/osdep.c qemu_open_internal(),
# block/nbd.c (the client drops the server's error text since 6.1, 51edbf537d),
# block.c bdrv_node_refresh_perm(), bdrv_reopen_prepare().
NBD_RO_EXPORT = r"Could not open image: Permission denied"
NODE_IS_READ_ONLY = r"Block node is read-only"
NBD_CANT_REOPEN_RW = r"Can't reopen read-only NBD mount as read/write"


def open_failed(target: Target) -> str:
    """The error of a refused read-write open of *target*'s file."""
    return rf"Could not open '{re.escape(str(target.fd_path))}': {re.escape(target.error_text or '')}"


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
