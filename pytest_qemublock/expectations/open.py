"""Expectations of the open scenario (suites/test_open.py)."""
from __future__ import annotations

import re

from ..backends import drivers
from ..backends.base import Target
from ..qemu.capabilities import Capabilities
from ..scenario.known_bugs import NBD_RO_EXPORT_MESSAGE_LOST
from ..scenario.matrix import Case
from .common import NBD_RO_EXPORT, NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, Expect, dynamic, image_fd, open_failed

#: where each protocol driver refuses a read-write open (see backends/drivers.py)
_REFUSED_IN = {"nbd": "block/nbd.c", "http": "block/curl.c curl_open",
               "iscsi": "block/iscsi.c iscsi_open", "ssh": "block/ssh.c connect_to_ssh"}


def effective_aro(case: Case) -> bool:
    """``-drive`` turns auto-read-only on by default (blockdev.c blockdev_init);
    ``-blockdev``, ``blockdev-add`` and qsd default it off (block.c)."""
    if case.aro is not None:
        return case.aro
    return case.interface == "drive"


def expect_open(case: Case, target: Target, caps: Capabilities) -> Expect:
    """Opening *target* with the case's read-only/auto-read-only options.

    Node ``n0`` carries the options; with a format (``case.fmt`` not proto)
    ``n0`` is the format node and ``p0`` its inline protocol child, which
    inherits both options (block.c bdrv_inherited_options).
    """
    ro, aro = bool(case.ro), effective_aro(case)
    file = target.driver == "file"
    fmt = case.fmt not in (None, "proto")
    opts = f"read-only={'on' if ro else 'off'}, auto-read-only={'on' if aro else 'off'}"

    if ro:
        nodes = {"n0": True, **({"p0": True} if fmt else {})}
        return Expect(True, ro=nodes, fds=image_fd(O_RDONLY if file else None),
                      because=f"{opts}: read-only=on opens read-only on any storage")

    if not target.readonly:
        if fmt:
            # A read-write qcow2 takes WRITE on its file at once, so even a
            # dynamic file child switches to O_RDWR (block.c bdrv_default_perms_for_storage).
            return Expect(True, ro={"n0": False, "p0": False}, fds=image_fd(O_RDWR if file else None),
                          because=f"{opts}: writable storage; the format node wants to write")
        if file:
            ro_fd = O_RDONLY if aro and dynamic(caps) else O_RDWR
            return Expect(True, ro={"n0": False}, fds=image_fd(ro_fd),
                          because=f"{opts}: writable storage; file-posix "
                                  + ("opens O_RDONLY until a writer attaches (dynamic auto-read-only)"
                                     if ro_fd == O_RDONLY else "opens O_RDWR"))
        return Expect(True, ro={"n0": False}, because=f"{opts}: writable export")

    # Read-only storage, read-write requested.
    if not aro:
        err = open_failed(target) if file else (drivers.refused_open(target) or NBD_RO_EXPORT)
        where = f" ({_REFUSED_IN[target.driver]})" if target.driver in _REFUSED_IN else ""
        return Expect(False, error=err,
                      because=f"{opts}: storage refuses writes, no auto-read-only{where}")
    if not drivers.honours_auto_read_only(target):
        return Expect(False, error=drivers.refused_open(target),
                      because=f"{opts}: the {target.driver} driver has no auto-read-only fallback: "
                              f"it opens the remote file O_RDWR and the server refuses "
                              f"({_REFUSED_IN.get(target.driver, target.driver)})")
    if fmt:
        if file:
            return Expect(False, error=open_failed(target),
                          because=f"{opts}: auto-read-only cannot help a read-write format node: "
                                  "it needs WRITE on its file, which the storage refuses "
                                  "(block.c bdrv_default_perms_for_storage)")
        return Expect(False, error=NODE_IS_READ_ONLY,
                      because=f"{opts}: the {target.driver} child degrades to ro=true, the read-write "
                              "format node on top cannot get WRITE (block.c bdrv_node_refresh_perm)")
    if file:
        if dynamic(caps):
            return Expect(True, ro={"n0": False}, fds=image_fd(O_RDONLY),
                          because=f"{opts}: degrades silently; dynamic file-posix keeps ro=false "
                                  "with an O_RDONLY fd (file-posix.c raw_open_common)")
        return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY),
                      because=f"{opts}: degrades to ro=true (pre-4.0 file-posix)")
    return Expect(True, ro={"n0": True},
                  because=f"{opts}: degrades; the {target.driver} node shows ro=true "
                          f"(bdrv_apply_auto_read_only in {_REFUSED_IN.get(target.driver, target.driver)})")


#: block/nbd.c nbd_handle_updated_info: bdrv_apply_auto_read_only(bs, "NBD export is read-only", errp)
NBD_EXPORT_IS_READ_ONLY = "NBD export is read-only"


def expect_read_only_export_message() -> Expect:
    """``blockdev-add`` read-write (auto-read-only off) of a read-only NBD export: the message
    QEMU means to give (the open matrix matches today's text, see the known bug)."""
    return Expect(False, error=re.escape(NBD_EXPORT_IS_READ_ONLY), bug=NBD_RO_EXPORT_MESSAGE_LOST,
                  because="the server flags the export NBD_FLAG_READ_ONLY; without auto-read-only "
                          "block.c bdrv_apply_auto_read_only refuses with the reason block/nbd.c "
                          "nbd_handle_updated_info gives it")
