"""Expectations of the external-snapshot scenario (suites/test_extsnap.py).

A qcow2 base ``b0`` (file node ``bf``) behind a ``-drive`` BlockBackend ``d0``
gets an overlay ``n0``, through ``blockdev-snapshot-sync`` (QEMU creates and
opens the overlay) or ``blockdev-snapshot`` (an overlay added before, read-write,
``backing: null``). blockdev.c external_snapshot_action opens a -sync overlay
with the base's own open flags (``flags = state->old_bs->open_flags``), so a
read-only base gets a read-only overlay; external_snapshot_commit then reopens
the base read-only (``bdrv_reopen_set_read_only(old_bs, true)``, 1b57774f79),
which its file child follows. The BlockBackend's root is the overlay afterwards.
"""
from __future__ import annotations

from .common import O_RDONLY, O_RDWR, Expect

_SYNC = ("blockdev.c external_snapshot_action: a blockdev-snapshot-sync overlay is opened with the "
         "base's open flags")
_COMMIT = ("blockdev.c external_snapshot_commit: bdrv_reopen_set_read_only(old_bs, true) (1b57774f79); "
           "the base's file child inherits read-only in the reopen")
_ADDED = "blockdev-snapshot keeps the overlay as it was added (read-write: blockdev-add's default)"


def expect_snapshot(command: str, base_ro: bool) -> Expect:
    """``command`` (``snapshot-sync`` or ``snapshot``) over base b0 (read-only=*base_ro*), the
    overlay on writable storage. ``ro`` of n0 is also query-block's for d0; fds ``base`` and
    ``overlay``."""
    overlay_ro = base_ro if command == "snapshot-sync" else False
    how = (f"{_SYNC}: {'read-only' if base_ro else 'read-write'}" if command == "snapshot-sync" else _ADDED)
    base = ("the base was read-only already and stays so" if base_ro
            else f"the read-write base becomes read-only ({_COMMIT})")
    return Expect(True, ro={"n0": overlay_ro, "b0": True, "bf": True},
                  fds={"base": O_RDONLY, "overlay": O_RDONLY if overlay_ro else O_RDWR},
                  because=f"overlay {'read-only' if overlay_ro else 'read-write'}: {how}; {base}")


def expect_sync_on_read_only_storage(path_error: str) -> Expect:
    """``blockdev-snapshot-sync`` with the overlay file in the read-only storage of the base:
    bdrv_img_create cannot create it, nothing changes."""
    return Expect(False, error=path_error, ro={"b0": True, "bf": True}, fds={"base": O_RDONLY},
                  because="blockdev.c external_snapshot_action: bdrv_img_create() fails on storage that "
                          "refuses writes (the error of the qcow2 driver's create: block/qcow2.c "
                          "qcow2_co_create_opts -> bdrv_co_create_file -> file-posix raw_co_create); "
                          "the transaction is aborted and the base keeps its state")


def expect_overlay_in_use() -> Expect:
    """``blockdev-snapshot`` onto an overlay that a reader already uses (a read-only NBD export
    of n0): refused, and nothing changes."""
    return Expect(False, error="The overlay is already in use", ro={"n0": False, "b0": True, "bf": True},
                  fds={"base": O_RDONLY, "overlay": O_RDWR},
                  because="blockdev.c external_snapshot_action: an overlay whose parents take "
                          "CONSISTENT_READ (bdrv_get_cumulative_perm) is refused, a parent as such is "
                          "not (d29d3d1f80); the transaction is aborted")
