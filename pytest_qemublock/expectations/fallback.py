"""Expectations of drivers whose read-only fallback needs auto-read-only (suites/test_fallback.py).

vvfat without ``rw=on`` cannot write at all: block/vvfat.c ``vvfat_open``
calls ``bdrv_apply_auto_read_only(bs, NULL, errp)`` (block.c), which turns a
read-write open into a read-only one only under ``auto-read-only=on`` and
otherwise fails with its default text ``Image is read-only`` (the errmsg is
NULL). Before eaa2410f1e ("block: Require auto-read-only for existing
fallbacks", 3.1) vvfat switched to read-only silently. ``-drive`` defaults
``auto-read-only`` to on (blockdev.c ``blockdev_init`` / ``drive_new``
``BDRV_O_AUTO_RDONLY``), ``-blockdev``/``blockdev-add``/qsd to off. A node
that degraded is ro=true, so a writer attaching later is refused by block.c
``bdrv_node_refresh_perm``: ``Block node is read-only``. The bochs format
does the same first thing in ``bochs_open``, cloop in ``cloop_open`` (both
covered, with images the suite writes itself); dmg too (same text, not
covered: its image format is too involved to write by hand), and vmdk's
seSparse subformat says
``No write support for seSparse images available``; rbd (snapshots) and
gluster need servers this harness does not run. Checked against 7.2.22 and
10.0.2.
"""
from __future__ import annotations

import re

from ..scenario.outcome import Expect
from .common import NODE_IS_READ_ONLY

IMAGE_IS_READ_ONLY = "Image is read-only"
#: driver -> the function that applies auto-read-only (all: errmsg NULL, so the default text)
OPENERS = {"vvfat": "block/vvfat.c vvfat_open",
           "bochs": "block/bochs.c bochs_open (before it even opens its file child)",
           "cloop": "block/cloop.c cloop_open (before it even opens its file child)"}


def _apply(driver: str) -> str:
    return f"{OPENERS[driver]} -> block.c bdrv_apply_auto_read_only(bs, NULL, errp) (eaa2410f1e)"


def effective(interface: str, ro: bool | None, aro: bool | None) -> tuple[bool, bool]:
    """(read-only, auto-read-only) after defaults: read-only off; auto-read-only on for -drive."""
    return bool(ro), (interface == "drive") if aro is None else aro


def expect_open(interface: str, ro: bool | None, aro: bool | None, driver: str = "vvfat") -> Expect:
    """Open node n0 of *driver*: vvfat over a host directory (without ``rw``), or a bochs
    image; either cannot write at all, on any storage."""
    read_only, auto = effective(interface, ro, aro)
    apply = _apply(driver)
    if read_only:
        return Expect(True, ro={"n0": True},
                      because=f"read-only=on: {apply} returns at once for a read-only open")
    if auto:
        why = "-drive defaults auto-read-only to on" if aro is None else "auto-read-only=on"
        return Expect(True, ro={"n0": True},
                      because=f"{why}: {apply} clears BDRV_O_RDWR, so the node is ro=true")
    return Expect(False, re.escape(IMAGE_IS_READ_ONLY), because=(
        f"read-write without auto-read-only: {apply} fails with its default text"))


def expect_writer_refused(opened: Expect) -> Expect:
    """HMP ``qemu-io n0 "write ..."`` on the opened (read-only) node."""
    return opened.replace(ok=False, error=re.escape(NODE_IS_READ_ONLY), because=(
        "block.c bdrv_node_refresh_perm: the writer's WRITE permission on a ro=true node is refused; "
        f"the node stays as opened ({opened.because})"))
