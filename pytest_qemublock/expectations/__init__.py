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

import re
from dataclasses import dataclass, field
from typing import Mapping

from ..backends import Target
from ..probe import Capabilities

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


#: (scenario, case-id regex, build predicate description) -> bug reference.
#: Each entry becomes a strict xfail naming the bug. None known so far.
KNOWN_BUGS: list[tuple[str, str, str]] = []


def known_bug(scenario: str, case_id: str) -> str | None:
    for sc, pattern, bug in KNOWN_BUGS:
        if sc == scenario and re.search(pattern, case_id):
            return bug
    return None


from .open import effective_aro, expect_open  # noqa: E402  (re-exported for suites)

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
from . import dynamic_aro as _dynamic_aro  # noqa: E402,F401
from . import jobs as _jobs  # noqa: E402,F401
