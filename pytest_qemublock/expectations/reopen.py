"""Expectations of the reopen scenario (suites/test_reopen.py).

``blockdev-reopen`` (QAPI since 6.1, e60edf69e2; block.c bdrv_reopen_multiple):

* "Any option not specified will be reset to its default value" (QAPI doc):
  a reopen that only says ``read-only=false`` also sets auto-read-only back
  to false, so on read-only storage it fails even if the node was opened
  with auto-read-only=on (qapi/block-core.json, blockdev-reopen);
* file-posix decides the fd from the new flags (raw_reopen_prepare ->
  raw_reconfigure_getfd): read-write without auto-read-only needs O_RDWR
  (refused by read-only storage), auto-read-only=on keeps ro=false with an
  O_RDONLY fd while no writer is attached (dynamic), read-only=on is O_RDONLY;
* nbd: nbd_client_reopen_prepare() refuses read-write on an export with
  NBD_FLAG_READ_ONLY and ignores auto-read-only, so even
  the options the node was opened with are refused;
* a refused reopen aborts the whole transaction (bdrv_reopen_abort): the
  node keeps its flags and its fd;
* image locks (file-posix, expectations/locks.py): a protocol node nobody
  uses holds no permission, so no lock byte, whatever its flags; under a
  qcow2 node its file holds what the format takes (read-only: consistent
  read, write and resize unshared; read-write: write and resize too), and
  a second process sees that.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import drivers
from ..backends.base import Target
from ..qemu.capabilities import Capabilities
from ..scenario.known_bugs import EMPTY_REOPEN_ABORTS, STALE_FLAGS_REOPEN_RO
from ..scenario.matrix import Case
from ..scenario.outcome import IMAGE
from .common import (
    NBD_CANT_REOPEN_RW,
    NODE_IS_READ_ONLY,
    O_RDONLY,
    O_RDWR,
    Expect,
    dynamic,
    image_fd,
    open_failed,
)
from .locks import NONE, PROBES, QEMU_IO_RO, QEMU_IO_RW, file_child, lock_ranges, second_open
from .open import expect_open


def no_locks(exp: Expect, target: Target) -> Expect:
    """*exp* plus: a file node without parents holds no lock byte (no permission taken:
    raw_apply_lock_bytes locks only held and unshared permissions), so a second process
    opens the image, read-write too, unless the storage refuses writes (locks.second_open)."""
    if target.driver != "file":
        return exp
    path = str(target.fd_path)
    refused = target.error_text if refuses_writes(target) else None
    others = {p: second_open(p, "raw", NONE, path, refused) for p in (QEMU_IO_RW, QEMU_IO_RO)}
    return exp.replace(locks={IMAGE: ()}, others=others,
                       because=f"{exp.because}; no parent, no permission: no image lock, so a second "
                               "process meets only the storage")


def _format_locks(target: Target, read_only: bool) -> dict[str, Any]:
    """Expect fields: the locks of p0 under qcow2 n0 and what a second process (no -U) gets
    (file backends only)."""
    if target.driver != "file":
        return {}
    perms = file_child("qcow2", NONE, writable=not read_only)
    path = str(target.fd_path)
    refused = target.error_text if refuses_writes(target) else None
    return {"locks": {IMAGE: lock_ranges(perms)},
            "others": {p: second_open(p, "qcow2", perms, path, refused) for p in PROBES}}


def flags(opts: Mapping[str, Any]) -> tuple[bool, bool]:
    """(read-only, auto-read-only) that *opts* amount to: left-out options are false."""
    return bool(opts.get("read-only", False)), bool(opts.get("auto-read-only", False))


def describe(opts: Mapping[str, Any]) -> str:
    shown = [f"{k}={'true' if opts[k] else 'false'}" for k in ("read-only", "auto-read-only") if k in opts]
    return "{" + ", ".join(shown) + "}" if shown else "{} (all options left out)"


def refuses_writes(target: Target) -> bool:
    """Whether *target*'s storage refuses writes *now* (file storage can be flipped)."""
    if target.driver == "file" and target.storage_obj is not None:
        return target.storage_obj.readonly
    return target.readonly


def expect_start(target: Target, caps: Capabilities, opts: Mapping[str, Any]) -> Expect:
    """The protocol node ``n0`` opened over QMP with *opts* (the open suite's rule)."""
    ro = opts.get("read-only")
    aro = opts.get("auto-read-only")
    return expect_open(Case(target.backend, target.storage, fmt="proto", interface="qmp", ro=ro, aro=aro),
                       target, caps)


def unchanged(current: Expect, why: str) -> Expect:
    """The state *current* again: a refused step must not touch the node."""
    return Expect(True, ro=dict(current.ro), fds=dict(current.fds), locks=dict(current.locks),
                  others=dict(current.others),
                  because=f"{why}; a refused reopen is rolled back (bdrv_reopen_abort), so the node keeps "
                          f"its state: {current.because}")


def expect_reopen(target: Target, caps: Capabilities, current: Expect,
                  opts: Mapping[str, Any]) -> Expect:
    """``blockdev-reopen`` of the protocol node ``n0`` (no parents, no writers) to *opts*.

    *current* is the expected state before; a refused reopen leaves exactly that
    (check it with :func:`unchanged`).
    """
    ro, aro = flags(opts)
    asked = f"reopen to {describe(opts)}"
    omitted = "" if "auto-read-only" in opts or ro else " (auto-read-only left out resets it to false)"
    if target.driver == "file":
        if ro:
            return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY),
                          because=f"{asked}: read-only=true gives an O_RDONLY fd")
        if aro:
            if dynamic(caps):
                return Expect(True, ro={"n0": False}, fds=image_fd(O_RDONLY),
                              because=f"{asked}: dynamic auto-read-only keeps ro=false with an O_RDONLY fd "
                                      "while no writer is attached, on any storage (raw_reopen_prepare)")
            return Expect(True, ro={"n0": refuses_writes(target)},
                          fds=image_fd(O_RDONLY if refuses_writes(target) else O_RDWR),
                          because=f"{asked}: pre-4.0 file-posix (no dynamic auto-read-only) degrades at "
                                  "reopen time (source reading only: no such build here)")
        if refuses_writes(target):
            return Expect(False, error=open_failed(target),
                          because=f"{asked}{omitted}: read-write without auto-read-only needs an O_RDWR "
                                  "open, which the storage refuses (util/osdep.c qemu_open_internal)")
        return Expect(True, ro={"n0": False}, fds=image_fd(O_RDWR),
                      because=f"{asked}{omitted}: read-write on writable storage opens O_RDWR")
    if target.driver in drivers.CANNOT_REOPEN:
        return Expect(False, error=drivers.no_reopen(target.driver, "n0"),
                      because=f"{asked}: the {target.driver} driver has no .bdrv_reopen_prepare, so "
                              "block.c bdrv_reopen_prepare() refuses every reopen, read-only or not")
    if target.driver == "iscsi":
        if ro:
            return Expect(True, ro={"n0": True}, because=f"{asked}: read-only=true is always allowed")
        if target.readonly:
            return Expect(False, error=drivers.ISCSI_CANT_REOPEN_RW,
                          because=f"{asked}: the LUN is write protected and iscsi_reopen_prepare() refuses "
                                  "read-write whatever auto-read-only says (block/iscsi.c)")
        return Expect(True, ro={"n0": False},
                      because=f"{asked}: writable LUN; iscsi is never dynamic, so ro=false even with "
                              "auto-read-only=on")
    # nbd
    if ro:
        return Expect(True, ro={"n0": True}, because=f"{asked}: read-only=true is always allowed")
    if target.readonly:
        return Expect(False, error=NBD_CANT_REOPEN_RW,
                      because=f"{asked}: the export is read-only and nbd_client_reopen_prepare() refuses "
                              "read-write whatever auto-read-only says (block/nbd.c)")
    return Expect(True, ro={"n0": False},
                  because=f"{asked}: writable export; nbd is never dynamic, so ro=false even with "
                          "auto-read-only=on")


# -- a qcow2 node over a separately created protocol node with auto-read-only=on ----
# (libvirt's layout: the format node carries read-only, the protocol node aro=on)


def _child(target: Target, caps: Capabilities) -> tuple[bool, str | None]:
    """ro flag and fd of the protocol node p0 (read-only=off, auto-read-only=on)."""
    if target.driver == "file":
        return (False, O_RDONLY) if dynamic(caps) else (target.readonly, O_RDONLY)
    return target.readonly, None


def expect_format_start(target: Target, caps: Capabilities) -> Expect:
    """qcow2 ``n0`` read-only=on over ``p0`` (read-only=off, auto-read-only=on)."""
    p0, fd = _child(target, caps)
    return Expect(True, ro={"n0": True, "p0": p0}, fds=image_fd(fd),
                  because="a read-only qcow2 asks its child for no WRITE, so p0 stays as auto-read-only "
                          "made it (file: ro=false, O_RDONLY; nbd: ro as the export); it takes "
                          "consistent read and shares neither write nor resize (block.c "
                          "bdrv_default_perms_for_metadata)",
                  **_format_locks(target, True))


def expect_format_reopen(target: Target, caps: Capabilities, read_only: bool) -> Expect:
    """``blockdev-reopen`` of the qcow2 ``n0`` (``file: "p0"``) to *read_only*."""
    p0, fd = _child(target, caps)
    if read_only:
        return Expect(True, ro={"n0": True, "p0": p0}, fds=image_fd(fd),
                      because="qcow2 back to read-only drops its WRITE on p0; the dynamic file node "
                              "returns to O_RDONLY (file-posix raw_reconfigure_getfd), its write and "
                              "resize lock bytes go",
                      **_format_locks(target, True))
    if not target.readonly:
        return Expect(True, ro={"n0": False, "p0": False},
                      fds=image_fd(O_RDWR if target.driver == "file" else None),
                      because="a read-write qcow2 takes WRITE and RESIZE on p0 (block.c "
                              "bdrv_default_perms_for_metadata); the auto-read-only file node switches "
                              "to O_RDWR and locks bytes 101 and 103 too",
                      **_format_locks(target, False))
    if target.driver == "file":
        return Expect(False, error=open_failed(target),
                      because="qcow2 read-write needs WRITE on p0; the file node must reopen O_RDWR, "
                              "which the storage refuses (util/osdep.c qemu_open_internal)")
    return Expect(False, error=NODE_IS_READ_ONLY,
                  because="qcow2 read-write needs WRITE on p0, which auto-read-only made ro=true "
                          "(block.c bdrv_node_refresh_perm)")


# -- sequences -----------------------------------------------------------------------

SAME_OPTIONS_THEN_READ_ONLY = (
    "a node reopened read-only must drop write access: raw_reopen_prepare() computes O_RDONLY "
    "from the new flags, as a direct reopen read-only=true from the same start state shows")

STILL_USABLE = ("a reopen, granted or refused, leaves a working node: the image's pattern reads back "
                "through it (a refused one is rolled back by bdrv_reopen_abort)")

FLIP_BACK = ("the storage can only be made read-only again once QEMU holds no O_RDWR fd on it "
             "(the kernel refuses a read-only remount with EBUSY while a file is open for writing), so "
             "the node is reopened read-only first")


def expect_write_after_flip(current: Expect) -> Expect:
    """HMP ``qemu-io write`` on ``n0`` once the storage accepts writes and ``n0`` was
    reopened read-write (*current*): it succeeds and the node stays as it was."""
    return Expect(True, ro=dict(current.ro), fds=dict(current.fds), locks=dict(current.locks),
                  because="the storage accepts writes now and n0 is read-write with an O_RDWR fd, "
                          "so the writer needs no reopen (file-posix raw_check_perm: nothing to change)")


def expect_read_only_after_unchanged(target: Target, caps: Capabilities, current: Expect) -> Expect:
    """``blockdev-reopen`` to read-only=true right after a reopen that changed nothing."""
    exp = expect_reopen(target, caps, current, {"read-only": True})
    return exp.replace(because=f"{exp.because}; {SAME_OPTIONS_THEN_READ_ONLY}", bug=STALE_FLAGS_REOPEN_RO)


def expect_empty_reopen() -> Expect:
    """``blockdev-reopen`` with ``options: []``."""
    return Expect(None, because="the schema allows an empty list ('options': ['BlockdevOptions']): "
                                "QEMU must answer it (an empty success or an error), not die",
                  bug=EMPTY_REOPEN_ABORTS)
