"""A few rows of the open matrix (expectations/open.py), checked without QEMU."""
from __future__ import annotations

import re

from helpers_unit import caps, file_target, nbd_target

from pytest_qemublock.expectations import expect_open
from pytest_qemublock.scenario.matrix import Case
from pytest_qemublock.scenario.outcome import IMAGE, O_RDONLY, O_RDWR


def test_file_degrades_silently_with_auto_read_only() -> None:
    exp = expect_open(Case("file", "erofs", "proto", "blockdev", False, True), file_target("erofs"), caps())
    assert (exp.ok, dict(exp.ro), dict(exp.fds)) == (True, {"n0": False}, {IMAGE: O_RDONLY})


def test_file_read_write_refused_without_auto_read_only() -> None:
    exp = expect_open(Case("file", "eacces", "proto", "qmp", False, False), file_target("eacces"), caps())
    assert exp.ok is False and exp.error is not None
    assert re.fullmatch(exp.error, "Could not open '/srv/st-eacces/raw.img': Permission denied")
    assert not re.fullmatch(exp.error,
                            "Could not open '/srv/st-eacces/raw.img': Permission denied (os error)")


def test_drive_defaults_to_auto_read_only() -> None:
    exp = expect_open(Case("file", "erofs", "proto", "drive", False, None), file_target("erofs"), caps())
    assert exp.ok is True and exp.fds == {IMAGE: O_RDONLY}


def test_read_write_qcow2_cannot_degrade() -> None:
    exp = expect_open(Case("file", "erofs", "qcow2", "blockdev", False, True), file_target("erofs"), caps())
    assert exp.ok is False
    exp = expect_open(Case("nbd-qemu-nbd-unix", "ro", "qcow2", "qmp", False, True), nbd_target("ro"), caps())
    assert exp.ok is False and exp.error == "Block node is read-only"


def test_nbd_degrades_to_ro_true() -> None:
    exp = expect_open(Case("nbd-qemu-nbd-unix", "ro", "proto", "qmp", False, True), nbd_target("ro"), caps())
    assert exp.ok is True and dict(exp.ro) == {"n0": True} and not exp.fds


def test_writable_file_is_o_rdwr_without_auto_read_only() -> None:
    exp = expect_open(Case("file", "rw", "proto", "qsd", False, False), file_target("rw"), caps())
    assert exp.fds == {IMAGE: O_RDWR}
