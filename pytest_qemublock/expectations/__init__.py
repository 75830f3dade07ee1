"""What QEMU should do, in one place: this package, one module per scenario.

Each function maps a case (and the build's probed capabilities) to an
:class:`~pytest_qemublock.scenario.outcome.Expect` and says *why*, citing the
QEMU source the rule comes from. Expectations are guarded by capabilities
where QEMU offers one (the QAPI feature ``dynamic-auto-read-only`` marks the
4.0 file-posix change), not by version numbers. Every row was checked against
Debian's 7.2 and 10.0.

Where a known QEMU bug (:mod:`pytest_qemublock.scenario.known_bugs`) makes
QEMU deviate, the expectation still says what QEMU should do and carries the
bug (``Expect.bug``); the suite's CaseCheck handles the rest.
"""
from __future__ import annotations

from .common import (
                     NBD_CANT_REOPEN_RW,
                     NBD_RO_EXPORT,
                     NODE_IS_READ_ONLY,
                     O_RDONLY,
                     O_RDWR,
                     Expect,
                     dynamic,
                     image_fd,
                     open_failed,
)
from .open import effective_aro, expect_open, expect_read_only_export_message

__all__ = ["NBD_CANT_REOPEN_RW", "NBD_RO_EXPORT", "NODE_IS_READ_ONLY", "O_RDONLY", "O_RDWR", "Expect",
           "dynamic", "effective_aro", "expect_open", "expect_read_only_export_message", "image_fd",
           "open_failed"]
