"""What every scenario's rules share: fd modes, error texts of the block layer,
the dynamic auto-read-only capability (the expected outcome is scenario.outcome.Expect)."""
from __future__ import annotations

# per-driver facts, re-exported for the scenario modules
from ..backends.drivers import NBD_CANT_REOPEN_RW as NBD_CANT_REOPEN_RW
from ..backends.drivers import NBD_RO_EXPORT as NBD_RO_EXPORT
from ..backends.drivers import open_failed as open_failed
from ..qemu.capabilities import Capabilities
from ..scenario.outcome import IMAGE, O_RDONLY, O_RDWR, Expect

__all__ = ["Expect", "IMAGE", "O_RDONLY", "O_RDWR", "NBD_RO_EXPORT", "NODE_IS_READ_ONLY",
           "NBD_CANT_REOPEN_RW", "open_failed", "dynamic", "image_fd"]

# Error texts (regexes). Source: block.c bdrv_node_refresh_perm().
NODE_IS_READ_ONLY = r"Block node is read-only"


def dynamic(caps: Capabilities) -> bool:
    """file-posix keeps ``ro=false`` and switches the fd (QEMU 4.0+, 23dece19da)."""
    return caps.has_feature("BlockdevOptions.file", "dynamic-auto-read-only")


def image_fd(mode: str | None) -> dict[str, str]:
    """The fd expectation of a one-image scenario: *mode* for label ``image`` (None: not checked)."""
    return {IMAGE: mode} if mode is not None else {}
