"""What QEMU should do, in one place: this package, one module per scenario.

Each function maps a case (and the build's probed capabilities) to an
:class:`Expect` and says *why*, citing the QEMU source or document the rule
comes from. Expectations are guarded by capabilities where QEMU offers one
(the QAPI feature ``dynamic-auto-read-only`` marks the 4.0 file-posix change),
not by version numbers. Every row was checked against Debian's 7.2 and 10.0.

Known QEMU bugs are listed in :data:`KNOWN_BUGS`; a case matching one is a
strict xfail that names the bug, so a fixed build shows up as XPASS(strict).
"""
from __future__ import annotations

from .common import (NBD_CANT_REOPEN_RW, NBD_RO_EXPORT, NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, Expect,
                     dynamic, open_failed)
from ..scenario.known_bugs import KNOWN_BUGS, known_bug


from .open import effective_aro, expect_open

# -- reopen scenario (expectations/reopen.py) ----------------------------------------
KNOWN_BUGS.append((
    "reopen", r"^file-rw-proto-ro_off-aro_off-same_options_then_ro$",
    "QEMU bug (behaviour.md S5(b), RESULTS.md D2; 7.2.22 and 10.0.2): after a blockdev-reopen "
    "that keeps file-posix's fd, blockdev-reopen read-only=true reports ro=true but keeps the "
    "O_RDWR fd (a direct reopen read-only=true gives O_RDONLY). Same root cause as the dynamic "
    "scenario's stale open_flags entry: raw_reopen_commit() copies open_flags that "
    "raw_reopen_prepare() no longer fills in (since 72373e40fb, v6.1)"))
KNOWN_BUGS.append((
    "reopen", r"^empty_options_list$",
    "QEMU bug candidate (found by suites/test_reopen.py; 7.2.22 and 10.0.2): blockdev-reopen with "
    "options=[] aborts QEMU: block.c bdrv_reopen_multiple: Assertion `bs_queue != NULL' failed "
    "(qmp_blockdev_reopen passes the empty queue on)"))

# -- dynamic and jobs scenarios: their modules add their own KNOWN_BUGS entries ----------
# (dynamic_aro, not dynamic: that name is the capability function above)
from . import dynamic_aro as _dynamic_aro
from . import jobs as _jobs
