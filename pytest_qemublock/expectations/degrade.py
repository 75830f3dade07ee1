"""Expectations of the degrade scenario (suites/test_degrade.py).

``auto-read-only=on`` (QAPI BlockdevOptions: "QEMU may automatically decide
not to open the image read-write as requested, but fall back to read-only
instead") on storage that refuses writes: the open succeeds, and how that
shows depends on the driver. Writers that attach later are refused, reads are
served. Without auto-read-only the open fails and is rolled back completely.

Node layout (as in the open suite): ``proto`` is the protocol node ``n0``
itself; ``raw`` is a raw format node ``n0`` over an inline protocol child
``p0``, which inherits read-only and auto-read-only (block.c
bdrv_inherited_options); ``qcow2`` likewise, with a qcow2 ``n0``.
"""
from __future__ import annotations

from ..backends import drivers
from ..backends.base import Target
from ..qemu.capabilities import Capabilities
from ..scenario.matrix import Case
from .common import NBD_RO_EXPORT, NODE_IS_READ_ONLY, O_RDONLY, Expect, dynamic, image_fd, open_failed
from .open import effective_aro

#: block/export/export.c blk_exp_add(): checked before any permission is taken
EXPORT_RO_NODE = r"Cannot export read-only node as writable"

#: The writers a suite can attach to a degraded node.
WRITERS = ("export", "hmp-qemu-io")

READS_SERVED = ("auto-read-only only takes write access away: a read-only NBD export of the "
                "node reads the image's bytes (block/export/export.c, nbd/server.c)")

NOTHING_LEFT = ("a refused blockdev-add is rolled back: bdrv_open_inherit() drops the half-built "
                "node (bdrv_unref -> bdrv_delete frees its name), which closes its fd and with it "
                "its OFD image locks (file-posix raw_close)")


def _protocol_state(target: Target, caps: Capabilities) -> tuple[bool, str | None, str]:
    """(ro flag, fd mode, reason) of a degraded protocol node."""
    if target.driver == "file":
        if dynamic(caps):
            return False, O_RDONLY, ("file-posix with dynamic auto-read-only keeps ro=false and holds "
                                     "an O_RDONLY fd until a writer attaches (file-posix.c raw_open_common, "
                                     "23dece19da; QAPI feature dynamic-auto-read-only)")
        return True, O_RDONLY, "pre-4.0 file-posix: bdrv_apply_auto_read_only() clears BDRV_O_RDWR"
    if target.driver in _DEGRADES_IN:
        return True, None, _DEGRADES_IN[target.driver]
    return True, None, ("nbd: the export has NBD_FLAG_READ_ONLY, so bdrv_apply_auto_read_only() "
                        "clears BDRV_O_RDWR and the node shows ro=true (block/nbd.c, 6c2e581d4d)")


#: other protocol drivers that degrade (drivers.HONOURS_AUTO_READ_ONLY); ssh has no fallback
_DEGRADES_IN = {
    "http": "http: curl_open() cannot write at all, so bdrv_apply_auto_read_only() clears BDRV_O_RDWR "
            "and the node shows ro=true (block/curl.c, 6ceef36acb)",
    "iscsi": "iscsi: the LUN is write protected, so iscsi_open() calls bdrv_apply_auto_read_only(), "
             "which clears BDRV_O_RDWR; the node shows ro=true (block/iscsi.c, 8f3bf50d34)",
}


def expect_degraded(case: Case, target: Target, caps: Capabilities) -> Expect:
    """Opening ``n0`` with read-only=off and auto-read-only on (explicit, or ``-drive``'s
    default) on read-only storage: the open succeeds and shows the driver's degradation."""
    assert target.readonly and not case.ro and effective_aro(case), f"{case.id} is no degrade case"
    ro, fd, why = _protocol_state(target, caps)
    aro = "auto-read-only=on" if case.aro else "-drive's default auto-read-only=on (blockdev.c blockdev_init)"
    if case.fmt == "proto":
        return Expect(True, ro={"n0": ro}, fds=image_fd(fd if target.driver == "file" else None),
                      because=f"read-only=off, {aro}, read-only storage: {why}")
    return Expect(True, ro={"n0": False, "p0": ro}, fds=image_fd(fd if target.driver == "file" else None),
                  because=f"read-only=off, {aro}, read-only storage: the raw node stays ro=false (raw "
                          "asks its child for WRITE only once a parent of its own does: without "
                          "offset/size its file is a filtered child, and block.c bdrv_filter_default_perms "
                          "passes raw's parents' permissions through to it); "
                          f"its child p0 inherits auto-read-only: {why}")


def expect_writer_refused(case: Case, target: Target, writer: str) -> Expect:
    """A writer attaching to the degraded ``n0``: ``export`` is ``block-export-add
    writable=true``, ``hmp-qemu-io`` is HMP ``qemu-io n0 "write ..."``."""
    if writer not in WRITERS:
        raise ValueError(f"unknown writer {writer!r}")
    if target.driver == "file":
        return Expect(False, error=open_failed(target),
                      because="the writer's WRITE permission makes file-posix reopen the image O_RDWR "
                              "(raw_check_perm -> raw_reconfigure_getfd), which the storage refuses "
                              "(util/osdep.c qemu_open_internal); there is no silent fallback for writers")
    if case.fmt == "proto" and writer == "export":
        return Expect(False, error=EXPORT_RO_NODE,
                      because=f"the {target.driver} node shows ro=true; blk_exp_add() refuses a writable "
                              "export of a read-only node before taking permissions (9b562c646b made it an "
                              "error; 30dbc81d31 moved the check there from nbd/server.c)")
    node = "n0" if case.fmt == "proto" else "its ro=true child p0"
    return Expect(False, error=NODE_IS_READ_ONLY,
                  because=f"the writer's WRITE permission reaches {node}, and a read-only node cannot "
                          "grant WRITE (block.c bdrv_node_refresh_perm)")


def expect_refused(case: Case, target: Target) -> Expect:
    """Opening ``n0`` read-write over QMP where neither the storage nor auto-read-only lets
    it happen: ``proto`` without auto-read-only, or ``qcow2`` (with or without it)."""
    aro = bool(case.aro)
    assert target.readonly and not case.ro and (case.fmt == "qcow2" or not aro), f"{case.id} opens"
    opts = f"read-only=off, auto-read-only={'on' if aro else 'off'}"
    if target.driver == "file":
        if case.fmt == "qcow2" and aro:
            why = ("auto-read-only cannot help a read-write qcow2 node: it takes WRITE on its file at "
                   "open (bdrv_default_perms_for_storage), so the file node must reopen O_RDWR "
                   "(file-posix raw_reconfigure_getfd)")
        else:
            why = "file-posix opens O_RDWR and the storage refuses it"
        return Expect(False, error=open_failed(target), because=f"{opts}: {why}")
    if target.driver not in ("nbd", "file"):
        if case.fmt == "qcow2" and aro and drivers.honours_auto_read_only(target):
            return Expect(False, error=NODE_IS_READ_ONLY,
                          because=f"{opts}: the {target.driver} child degrades to ro=true, the read-write "
                                  "qcow2 node cannot get WRITE on it (block.c bdrv_node_refresh_perm)")
        why = ("nothing allows a fallback" if not aro else
               f"the {target.driver} driver has no auto-read-only fallback (block/ssh.c connect_to_ssh)")
        return Expect(False, error=drivers.refused_open(target),
                      because=f"{opts}: the server refuses writes and {why} (backends/drivers.py)")
    if case.fmt == "qcow2" and aro:
        return Expect(False, error=NODE_IS_READ_ONLY,
                      because=f"{opts}: the nbd child degrades to ro=true, the read-write qcow2 node "
                              "cannot get WRITE on it (block.c bdrv_node_refresh_perm)")
    return Expect(False, error=NBD_RO_EXPORT,
                  because=f"{opts}: the export is read-only and nothing allows a fallback; since 6.1 the "
                          "client reports a generic EACCES text (a71d597b98: nbd_open connects through "
                          "nbd_co_do_establish_connection, which passes no errp to nbd_handle_updated_info)")


def expect_retry_read_only(case: Case, target: Target) -> Expect:
    """The same node name opened again at once, now with read-only=on."""
    nodes = {"n0": True, **({"p0": True} if case.fmt != "proto" else {})}
    return Expect(True, ro=nodes, fds=image_fd(O_RDONLY if target.driver == "file" else None),
                  because="the refused open left nothing behind, so the node name is free; "
                          "read-only=on opens on any storage (and the child inherits it)")
