"""Expectations of ``-drive snapshot=on`` over storage that refuses writes (suites/test_snapshot.py).

blockdev.c ``blockdev_init`` turns ``snapshot=on`` into BDRV_O_SNAPSHOT; block.c
``bdrv_open_inherit`` then opens the image like a backing file
(``bdrv_inherited_options(BDRV_CHILD_COW)``: ``read-only=on``, so file-posix
opens it O_RDONLY and it is ro=true whatever the storage) and puts a
temporary qcow2 overlay on top (``bdrv_append_temp_snapshot``, in
``create_tmp_file``'s ``$TMPDIR``, deleted when it closes), which gets the
drive's own ``read-only`` (``bdrv_temp_snapshot_options``). So on erofs or
eacces storage the drive opens, the guest view (query-block ``ro``) is
writable, a write lands in the overlay and reads back, the image fd stays
O_RDONLY and the image is bit-identical afterwards. With ``read-only=on`` as
well the overlay is read-only too and a writer is refused (block.c
``bdrv_node_refresh_perm``: ``Block node is read-only``). ``-blockdev`` has
no ``snapshot`` option (``Parameter 'snapshot' is unexpected``): the
equivalent is an explicit overlay (blockdev-snapshot*), which the reopen and
jobs suites cover. Checked against 7.2.22 and 10.0.2.
"""
from __future__ import annotations

import re

from ..scenario.outcome import Expect
from .common import NODE_IS_READ_ONLY, O_RDONLY, image_fd

OPENED_BECAUSE = ("block.c bdrv_open_inherit with BDRV_O_SNAPSHOT opens the image with backing-file "
                  "options (bdrv_inherited_options(BDRV_CHILD_COW): read-only=on), so n0 is ro=true with "
                  "an O_RDONLY fd on any storage, and bdrv_append_temp_snapshot puts a temporary qcow2 "
                  "overlay on top")


def opened() -> Expect:
    """-drive snapshot=on, the image's format node named n0."""
    return Expect(True, ro={"n0": True}, fds=image_fd(O_RDONLY), because=OPENED_BECAUSE)


def guest_view_ro(read_only: bool) -> tuple[bool, str]:
    """query-block's ``ro`` of the drive: the overlay's read-only (bdrv_temp_snapshot_options)."""
    return read_only, ("block.c bdrv_temp_snapshot_options copies the drive's read-only to the "
                       f"temporary overlay: read-only={'on' if read_only else 'off'}")


def write(read_only: bool) -> Expect:
    """HMP ``qemu-io d0 "write ..."`` through the drive's BlockBackend."""
    if read_only:
        return opened().replace(ok=False, error=re.escape(NODE_IS_READ_ONLY), because=(
            "the overlay is read-only too (read-only=on, bdrv_temp_snapshot_options): block.c "
            f"bdrv_node_refresh_perm refuses the writer; {OPENED_BECAUSE}"))
    return opened().replace(because=(
        "the write lands in the writable temporary overlay (bdrv_append_temp_snapshot); the image "
        f"below is untouched: {OPENED_BECAUSE}"))
