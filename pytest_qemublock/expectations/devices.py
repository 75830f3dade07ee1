"""Expectations of the devices scenario (suites/test_devices.py): guest devices on a
read-only node, and media changed or inserted into removable drives.

A device takes WRITE on its BlockBackend only if it can: since 6.0 (86b1cf3227)
scsi-hd, virtio-blk and the floppy ask ``blk_supports_write_perm()`` and come up
as read-only devices on a read-only node; scsi-cd and ide-cd never write; ide-hd
still asks for WRITE and is refused by the node. ``blockdev-change-medium``
opens the new medium with the flags of the drive's root state, changed by
``read-only-mode``, and without auto-read-only (e35bdc123a): a read-write medium
on storage that refuses writes fails instead of degrading.
"""
from __future__ import annotations

from .common import NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, Expect, image_fd

#: devices attached to a read-only node: the QEMU source that decides it
DEVICES = {
    "scsi-hd": "hw/scsi/scsi-disk.c scsi_realize: read_only = !blk_supports_write_perm(blk)",
    "virtio-blk-pci": ("hw/block/virtio-blk.c virtio_blk_device_realize: blkconf_apply_backend_options("
                       "..., !blk_supports_write_perm(blk), ...)"),
    "scsi-cd": "hw/scsi/scsi-disk.c scsi_realize: a TYPE_ROM device is always read_only",
    "ide-hd": ("hw/ide/qdev.c (hw/ide/ide-dev.c in 10.0) ide_dev_initfn: blkconf_apply_backend_options("
               "&dev->conf, kind == IDE_CD, ...): a hard disk asks for WRITE whatever the node"),
}
#: attached with -device at start (the pc machine's IDE buses take no hot-plug)
COLD_PLUGGED = ("ide-hd",)


def expect_device_on_read_only_node(device: str) -> Expect:
    """*device* attached to raw node ``n0`` (read-only=on): ``ro`` of n0 is also query-block's
    ``inserted.ro`` for the device's BlockBackend."""
    why = DEVICES[device]
    if device == "ide-hd":
        return Expect(False, error=NODE_IS_READ_ONLY,
                      because=f"{why}; the read-only node refuses the permission (block.c "
                              "bdrv_node_refresh_perm)")
    return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY),
                  because=f"{why} (86b1cf3227): the device comes up read-only and takes no WRITE, so "
                          "the node and its fd stay read-only")


def expect_write_through_device(device: str) -> Expect:
    """HMP ``qemu-io -d <device> "write ..."``: qemu-io raises the device's BlockBackend's
    permissions for the command (qemu-io-cmds.c command(): blk_set_perm(perm | WRITE))."""
    return Expect(False, error=NODE_IS_READ_ONLY, ro={"n0": True}, fds=image_fd(O_RDONLY),
                  because=f"{device} on a read-only node: its BlockBackend cannot take WRITE (block.c "
                          "bdrv_node_refresh_perm refuses it on a read-only node); nothing changes")


#: read-only-mode of blockdev-change-medium (None: left out, which is retain)
MODES = (None, "retain", "read-only", "read-write")
_SOURCE = ("block/qapi-sysemu.c (qapi-system.c in 10.0) qmp_blockdev_change_medium: bdrv_flags from "
           "blk_get_open_flags_from_root_state(), BDRV_O_AUTO_RDONLY cleared (e35bdc123a), read-only-mode "
           "retain: unchanged, read-only: clears BDRV_O_RDWR, read-write: sets it")


def change_medium_ro(mode: str | None, previous_ro: bool) -> bool:
    """Whether the new medium is read-only, given the drive's last medium (or its empty root
    state: a drive the device created has open_flags 0, so read-only)."""
    if mode == "read-only":
        return True
    if mode == "read-write":
        return False
    return previous_ro


def expect_change_medium(mode: str | None, previous_ro: bool, refused: str | None) -> Expect:
    """``blockdev-change-medium`` of a raw image into a removable drive with *mode*. ``ro`` of
    ``medium`` is query-block's inserted.ro of the drive, the image's fd is ``image``.
    *refused*: the storage's error for a read-write open (None: it accepts writes)."""
    ro = change_medium_ro(mode, previous_ro)
    given = "left out (retain)" if mode is None else mode
    previous = "read-only" if previous_ro else "read-write"
    because = f"read-only-mode {given}, previous medium {previous}: {_SOURCE}"
    if not ro and refused is not None:
        return Expect(False, error=refused,
                      because=f"{because}; without auto-read-only a read-write open of storage that "
                              "refuses writes fails (file-posix raw_open_common) and the drive keeps "
                              "what it had")
    return Expect(True, ro={"medium": ro}, fds=image_fd(O_RDONLY if ro else O_RDWR),
                  because=f"{because}; a file node without auto-read-only opens O_RDWR when read-write")


#: empty drives a read-only node is inserted into (blockdev-open-tray, -insert-medium, -close-tray)
INSERT = {
    "scsi-cd": ("7cef3d1290: hw/scsi/scsi-disk.c scsi_realize: a TYPE_ROM device is read_only, so an "
                "empty scsi-cd takes no WRITE and a read-only medium fits"),
    "floppy": ("0b9e918f03: hw/block/fdc.c floppy_drive_realize: read_only = !blk_bs(blk) || "
               "!blk_supports_write_perm(blk): an empty floppy takes no WRITE"),
}


def expect_insert_read_only_medium(device: str) -> Expect:
    return Expect(True, ro={"medium": True}, fds=image_fd(O_RDONLY),
                  because=f"{INSERT[device]}; the inserted node stays read-only")
