"""Expectations of host_device on a read-only loop device (suites/test_hostdev.py).

The driver's facts are in backends/drivers.py (``host_device``): file-posix
handles host block devices like files, with one more check,
``check_hdev_writable`` (ioctl BLKROGET), wherever it holds an O_RDWR fd
(raw_open_common, raw_reconfigure_getfd; bca5283bd4 made it respect
auto-read-only). So dynamic auto-read-only works here too: with
``auto-read-only=on`` the node opens ro=false with an O_RDONLY fd, and
every writer (a read-write format node on top, HMP qemu-io, a reopen to
read-write) gets ``The device is not writable: Permission denied``.
Without auto-read-only the open fails with that text; ``read-only=on``
opens ro=true. Checked against 7.2.22 and 10.0.2.
"""
from __future__ import annotations

from ..backends import drivers
from ..backends.base import Target
from ..qemu.capabilities import Capabilities
from ..scenario.outcome import Expect
from .common import O_RDONLY, dynamic, image_fd

DYNAMIC = ("block/file-posix.c raw_open_common with auto-read-only=on and no writer opens O_RDONLY and "
           "keeps ro=false (dynamic auto-read-only, 23dece19da); check_hdev_writable only runs for an "
           "O_RDWR fd (bca5283bd4)")


def effective_aro(interface: str, aro: bool | None) -> bool:
    """auto-read-only after defaults: on for -drive (blockdev.c), off elsewhere."""
    return interface == "drive" if aro is None else aro


def expect_open(target: Target, fmt: str, interface: str, ro: bool | None, aro: bool | None,
                caps: Capabilities) -> Expect:
    """Open n0 (the protocol node, or a *fmt* node over protocol child p0 that inherits
    the options). A read-write raw node takes no WRITE until a writer comes, so it opens
    like the protocol node (block/raw-format.c raw_child_perm passes its parents' perms on)."""
    facts = drivers.facts(target.driver)
    if ro:
        return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY),
                      because="read-only=on: file-posix opens O_RDONLY, no writability check")
    if not effective_aro(interface, aro):
        return Expect(False, facts.refused_open(target), because=(
            f"read-write without auto-read-only: {facts.refused_open_in}"))
    if fmt == "qcow2":
        return Expect(False, drivers.refused_reopen_rw(target), because=(
            "a read-write qcow2 node takes WRITE on its file at open (block.c "
            "bdrv_default_perms_for_storage), so the auto-read-only file node must switch to O_RDWR: "
            f"{facts.reopen_in}"))
    if not dynamic(caps):
        return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY),
                      because="before dynamic auto-read-only (QEMU < 4.0) file-posix degrades to ro=true")
    return Expect(True, ro={"n0": False}, fds=image_fd(O_RDONLY), because=DYNAMIC)


def expect_writer_refused(target: Target, opened: Expect) -> Expect:
    """HMP ``qemu-io n0 "write ..."`` or a reopen to read-write of the degraded n0."""
    facts = drivers.facts(target.driver)
    return opened.replace(ok=False, error=drivers.refused_reopen_rw(target), because=(
        f"the writer's WRITE permission makes file-posix reopen an O_RDWR fd: {facts.reopen_in}; "
        f"the node stays as opened ({opened.because})"))
