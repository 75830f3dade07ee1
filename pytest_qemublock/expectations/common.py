"""What every scenario's rules share: fd modes, error texts of the block layer,
the dynamic auto-read-only capability (the expected outcome is scenario.outcome.Expect)."""
from __future__ import annotations

import re

from ..backends.base import Target
from ..qemu.capabilities import Capabilities
from ..scenario.outcome import IMAGE, O_RDONLY, O_RDWR, Expect

__all__ = ["Expect", "IMAGE", "O_RDONLY", "O_RDWR", "NBD_RO_EXPORT", "NODE_IS_READ_ONLY",
           "NBD_CANT_REOPEN_RW", "open_failed", "dynamic", "image_fd"]

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


def image_fd(mode: str | None) -> dict[str, str]:
    """The fd expectation of a one-image scenario: *mode* for label ``image`` (None: not checked)."""
    return {IMAGE: mode} if mode is not None else {}
