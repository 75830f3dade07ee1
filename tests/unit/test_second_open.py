"""What a second process gets (expectations/locks.py), checked without QEMU."""
from __future__ import annotations

from pytest_qemublock.expectations.locks import (
    ALL,
    CONSISTENT_READ,
    NONE,
    PROBES,
    QEMU_IMG_INFO,
    QEMU_IMG_INFO_U,
    QEMU_IO_RO,
    QEMU_IO_RO_U,
    QEMU_IO_RW,
    WRITE,
    Perms,
    file_child,
    second_open,
)

P = "/img"
QCOW2_WRITER = file_child("qcow2", NONE, writable=True)


def test_qcow2_writer_refuses_the_tools_unless_force_shared() -> None:
    got = {p: second_open(p, "qcow2", QCOW2_WRITER, P) for p in PROBES}
    assert got[QEMU_IO_RW].endswith('Failed to get "write" lock\nIs another process using the image [/img]?')
    assert 'Failed to get shared "write" lock' in got[QEMU_IO_RO]
    assert 'Failed to get shared "write" lock' in got[QEMU_IMG_INFO]
    assert got[QEMU_IO_RO_U] == got[QEMU_IMG_INFO_U] == ""


def test_raw_writer_lets_qemu_img_info_in() -> None:
    writer = file_child("raw", Perms(CONSISTENT_READ | WRITE, ALL))  # e.g. a writable export
    assert second_open(QEMU_IMG_INFO, "raw", writer, P) == ""


def test_read_only_storage_refuses_the_read_write_probe_first() -> None:
    assert second_open(QEMU_IO_RW, "raw", NONE, P, "Read-only file system") == (
        "can't open device /img: Could not open '/img': Read-only file system")
    assert second_open(QEMU_IO_RO, "raw", NONE, P, "Read-only file system") == ""
