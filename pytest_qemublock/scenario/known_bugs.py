"""Known QEMU bugs: what each one makes QEMU do instead, where, and on which builds.

A :class:`KnownBug` names the cases it hits (scenario + case-id regex), the
builds that have it (all, unless a capability or a release says the build is
fixed) and the exact :class:`Deviation` it predicts at the step whose
expectation carries it. :class:`~pytest_qemublock.scenario.outcome.CaseCheck`
then knows three outcomes at that step: the predicted deviation (the hit is
recorded, the case goes on along the buggy timeline and ends as xfail), the
fixed behaviour (the case goes on and fails at the end like a strict XPASS),
or anything else (a plain failure naming the expectation and the prediction).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..qemu.capabilities import Capabilities

O_RDONLY, O_RDWR = "O_RDONLY", "O_RDWR"


@dataclass(frozen=True)
class Deviation:
    """What a bug makes QEMU do at its step, as far as it differs from the expectation.

    Fields left empty are as expected; ``abort`` means QEMU dies by SIGABRT
    and prints this text (an assertion) on stderr.
    """

    ok: bool | None = None
    error: str | None = None  # regex, full match (only with ok=False)
    ro: Mapping[str, bool] = field(default_factory=dict)  # node -> the wrong ro flag
    fds: Mapping[str, str] = field(default_factory=dict)  # image label -> the wrong fd mode
    locks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # image label -> the wrong locks
    abort: str | None = None

    def describe(self) -> str:
        if self.abort is not None:
            return f"QEMU dies with SIGABRT, stderr containing {self.abort!r}"
        parts = []
        if self.ok is not None:
            parts.append("succeeds" if self.ok else f"fails with /{self.error}/")
        parts += [f"{n}.ro={v}" for n, v in self.ro.items()]
        parts += [f"{label} fd {mode}" for label, mode in self.fds.items()]
        parts += [f"{label} locks {' '.join(r)}" for label, r in self.locks.items()]
        return ", ".join(parts) + ", everything else as expected"


@dataclass(frozen=True)
class KnownBug:
    """One known QEMU bug and the deviation it predicts."""

    id: str
    title: str  # one line
    cause: str  # the QEMU source function(s) and commit(s) responsible
    scenario: str
    cases: str  # regex searched in the case id (pytest's id without the build)
    deviation: Deviation
    #: the first release and commit with the fix, where QEMU offers nothing to probe
    fixed_in: tuple[tuple[int, int], str] | None = None
    #: a capability whose presence means fixed: ("command", name) or ("feature", "type:feature")
    fixed_by: tuple[str, str] | None = None

    @property
    def reason(self) -> str:
        return f"{self.id}: {self.title}"

    def hits(self, scenario: str, case_id: str) -> bool:
        return scenario == self.scenario and re.search(self.cases, case_id) is not None

    def affects(self, caps: Capabilities) -> bool:
        """Whether this build still has the bug."""
        if self.fixed_by is not None:
            kind, name = self.fixed_by
            fixed = (caps.has_command(name) if kind == "command"
                     else caps.has_feature(*name.split(":", 1)))
            if fixed:
                return False
        if self.fixed_in is not None and tuple(caps.version[:2]) >= self.fixed_in[0]:
            return False
        return True

    def describe(self) -> str:
        fixed = (f"; fixed in {'.'.join(map(str, self.fixed_in[0]))} by {self.fixed_in[1]}"
                 if self.fixed_in else "")
        return f"{self.reason} ({self.cause}{fixed}); predicts: {self.deviation.describe()}"


_STALE_FLAGS_CAUSE = (
    "block/file-posix.c raw_reopen_commit() copies BDRVRawReopenState.open_flags into s->open_flags, "
    "but since 72373e40fb ('block: bdrv_reopen_multiple: refresh permissions on updated graph', v6.1) "
    "raw_reopen_prepare() no longer fills it in (g_new0: 0 = O_RDONLY); raw_reconfigure_getfd() then "
    "finds a wanted O_RDONLY 'already there' and keeps the O_RDWR fd")

STALE_FLAGS_LAST_WRITER = KnownBug(
    "stale-open-flags-writer",
    "after a blockdev-reopen that keeps file-posix's fd, the fd stays O_RDWR when the last writer leaves",
    _STALE_FLAGS_CAUSE, "dynamic", r"^file-rw-raw-reopen-aro-on-under-",
    Deviation(fds={"image": O_RDWR}))

STALE_FLAGS_REOPEN_RO = KnownBug(
    "stale-open-flags-reopen-ro",
    "blockdev-reopen read-only=true after an unchanged reopen reports ro=true but keeps the O_RDWR fd",
    _STALE_FLAGS_CAUSE, "reopen", r"^file-rw-proto-ro_off-aro_off-same_options_then_ro$",
    Deviation(fds={"image": O_RDWR}))

EMPTY_REOPEN_ABORTS = KnownBug(
    "empty-reopen-aborts",
    "blockdev-reopen with options=[] aborts QEMU instead of answering",
    "blockdev.c qmp_blockdev_reopen() passes the empty queue on to block.c bdrv_reopen_multiple(), "
    "which asserts bs_queue != NULL",
    "reopen", r"^empty_options_list$",
    Deviation(abort="Assertion `bs_queue != NULL' failed"))

#: a read-write qcow2 base keeps write and resize on its file (file-posix lock bytes 101, 103)
BASE_RW_LOCKS = ("100-101", "103", "201", "203")

_ACTIVE_COMMIT_CAUSE = (
    "block/mirror.c commit_active_start() reopens a read-only base read-write; mirror_exit_common() "
    "gives it back its read-only flag only when the job aborts (since 7d99ae59a2, 'blockcommit: Reopen "
    "base image as RO after abort', QEMU 9.1) and otherwise only adjusts it on completion, where the "
    "base replaces the top")

ACTIVE_COMMIT_SOFT_CANCEL = KnownBug(
    "active-commit-soft-cancel-keeps-base-rw",
    "block-job-cancel of an active block-commit after READY leaves the base read-write (ro=false, O_RDWR)",
    _ACTIVE_COMMIT_CAUSE + "; a cancel after READY is neither, so the base keeps WRITE on its file",
    "jobs", r"^file-rw-chain-active-commit-cancel$",
    Deviation(ro={"base-fmt": False}, fds={"base": O_RDWR}, locks={"base": BASE_RW_LOCKS}))

ACTIVE_COMMIT_ABORT = KnownBug(
    "active-commit-abort-keeps-base-rw",
    "an active block-commit cancelled before READY leaves the base read-write (ro=false, O_RDWR)",
    "block/mirror.c mirror_exit_common() before 7d99ae59a2 restored the base's read-only flag only if "
    "the job failed to start",
    "jobs", r"^file-rw-chain-active-commit-cancel-early$",
    Deviation(ro={"base-fmt": False}, fds={"base": O_RDWR}, locks={"base": BASE_RW_LOCKS}),
    fixed_in=((9, 1), "7d99ae59a2"))

INACTIVE_WRITE_ABORTS = KnownBug(
    "inactive-write-aborts",
    "HMP qemu-io write on an inactive node (blockdev-set-active false) aborts QEMU",
    "block/block-backend.c: a BlockBackend attached to an inactive node gets disable_perm (c1c5c7cc4e, "
    "'block: Support inactive nodes in blk_insert_bs()', 10.0), so qemu-io-cmds.c command()'s "
    "blk_set_perm(WRITE) is not checked and the write reaches block/io.c bdrv_co_write_req_prepare, "
    "which asserts !(bs->open_flags & BDRV_O_INACTIVE)",
    "inactive", r"-hmp-qemu-io-write$",
    Deviation(abort="Assertion `!(bs->open_flags & BDRV_O_INACTIVE)' failed"))

#: what QEMU says today when a read-write open meets a read-only NBD export
NBD_RO_EXPORT_NOW = "Could not open image: Permission denied"

NBD_RO_EXPORT_MESSAGE_LOST = KnownBug(
    "nbd-ro-export-message-lost",
    "a read-write open of a read-only NBD export says 'Could not open image: Permission denied' "
    "instead of 'NBD export is read-only'",
    "block/nbd.c nbd_co_do_establish_connection() calls nbd_handle_updated_info(s->bs, NULL) since "
    "a71d597b98 (6.1): bdrv_apply_auto_read_only(bs, \"NBD export is read-only\", errp) returns -EACCES "
    "with its message dropped, and block.c bdrv_open_driver() makes up 'Could not open image: "
    "<strerror>'. Only the dedicated case per NBD server kind (suites/test_open.py "
    "test_read_only_export_message) carries the bug: the open matrix has 28 such refusals per NBD "
    "server and transport (168 per build), which match the current text "
    "(backends/drivers.py NBD_RO_EXPORT) so that they keep checking everything else and stay readable "
    "as passes; fix this entry and that constant together",
    "open", r"^nbd-[a-z-]+-unix-ro-proto-qmp-ro_off-aro_off-export_message$",
    Deviation(ok=False, error=re.escape(NBD_RO_EXPORT_NOW)))

#: every known bug, for reports and reviews
BUGS = (STALE_FLAGS_LAST_WRITER, STALE_FLAGS_REOPEN_RO, EMPTY_REOPEN_ABORTS, ACTIVE_COMMIT_SOFT_CANCEL,
        ACTIVE_COMMIT_ABORT, INACTIVE_WRITE_ABORTS, NBD_RO_EXPORT_MESSAGE_LOST)
