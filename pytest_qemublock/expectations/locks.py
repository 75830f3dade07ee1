"""What QEMU's image locks should be, and what a second process gets because of them.

file-posix (``locking=auto``/``on``) mirrors the permissions of the node on
its image as shared OFD locks, ``raw_apply_lock_bytes``: byte ``100 + bit``
for each permission the node holds, ``200 + bit`` for each one it does not
share (``RAW_LOCK_PERM_BASE`` / ``RAW_LOCK_SHARED_BASE``). A second process
checks them before it opens the image, ``raw_check_lock_bytes``: first
``200 + bit`` for each permission it wants (``Failed to get "<perm>" lock``),
then ``100 + bit`` for each one it does not share (``Failed to get shared
"<perm>" lock``); ``raw_handle_perm_lock`` appends the hint ``Is another
process using the image [<path>]?``. The kernel merges adjacent bytes of one
open file description into one range (``/proc/locks``: ``100 101``).

The permissions of a file node come from its parent's child role (block.c):

* a raw format node passes its users' permissions through
  (``bdrv_filter_default_perms``: ``DEFAULT_PERM_PASSTHROUGH`` =
  consistent-read, write, write-unchanged, resize; everything else shared);
* a qcow2 node's ``file`` child is metadata (``bdrv_default_perms_for_metadata``):
  the same, plus write and resize while the node is writable ("format drivers
  may touch metadata even if the guest doesn't write"), consistent-read, and
  never shares write or resize.

The tools (qemu-img, qemu-io without ``-U``) open through ``blk_new_open``,
which shares everything (``BDRV_O_NO_SHARE`` is not set by ``info`` or
qemu-io): a raw image that a QEMU writer holds opens (``qemu-img info``, and
even ``qemu-io`` read-write unless one of QEMU's users refuses to share write:
the raw format passes the tool's sharing through), while a qcow2 node never
shares write or resize on its file, so ``qemu-img info`` of a qcow2 image that
a QEMU writer holds fails (``Failed to get shared "write" lock``), however
little it asks for itself (BDRV_O_NO_IO: no permission at all). ``-U``
(force-share) lifts exactly that: the tool's file node then shares everything,
and only a permission it wants itself and QEMU does not share stops it. On
storage that refuses writes a read-write tool fails at its own open, before
any lock is looked at.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..scenario.steps import PROBES, QEMU_IMG_INFO, QEMU_IMG_INFO_U, QEMU_IO_RO, QEMU_IO_RO_U, QEMU_IO_RW

__all__ = ["ALL", "CONSISTENT_READ", "NONE", "PROBES", "QEMU_IMG_INFO", "QEMU_IMG_INFO_U", "QEMU_IO_RO",
           "QEMU_IO_RO_U", "QEMU_IO_RW", "RESIZE", "WRITE",
           "WRITE_UNCHANGED", "Perms", "file_child", "lock_ranges", "refusal", "second_open", "tool_perms",
           "union"]

# include/block/block-common.h BlkPermission: the permissions both builds lock (lock bytes 100-103,
# 200-203 seen on 7.2.22 and 10.0.2; nothing beyond)
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = 0x1, 0x2, 0x4, 0x8
ALL = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE
PASSTHROUGH = ALL  # DEFAULT_PERM_PASSTHROUGH: every permission left
NAMES = {CONSISTENT_READ: "consistent read", WRITE: "write", WRITE_UNCHANGED: "write unchanged",
         RESIZE: "resize"}
_BITS = (CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE)



@dataclass(frozen=True)
class Perms:
    """A node's (or a BlockBackend's) permissions: held and shared."""

    perm: int = 0
    shared: int = ALL

    def __or__(self, other: Perms) -> Perms:
        """Two parents of one node: permissions add up, shared ones intersect."""
        return Perms(self.perm | other.perm, self.shared & other.shared)


NONE = Perms()


def union(users: Iterable[Perms]) -> Perms:
    out = NONE
    for p in users:
        out = out | p
    return out


def file_child(fmt: str, parents: Perms, writable: bool = True) -> Perms:
    """What the format node *fmt* takes on its ``file`` child for these parents."""
    perm, shared = parents.perm & PASSTHROUGH, (parents.shared & PASSTHROUGH) | (ALL & ~PASSTHROUGH)
    if fmt == "raw":
        return Perms(perm, shared)
    if fmt == "qcow2":
        perm |= CONSISTENT_READ | ((WRITE | RESIZE) if writable else 0)
        return Perms(perm, shared & ~(WRITE | RESIZE))
    raise ValueError(f"no permission rules for format {fmt}")


def _ranges(offsets: list[int]) -> tuple[str, ...]:
    out: list[list[int]] = []
    for off in sorted(offsets):
        if out and out[-1][1] == off - 1:
            out[-1][1] = off
        else:
            out.append([off, off])
    return tuple(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def lock_ranges(file_perms: Perms) -> tuple[str, ...]:
    """The lock ranges file-posix holds for a file node with *file_perms*
    (raw_apply_lock_bytes), as /proc/locks shows them (adjacent bytes merged)."""
    held = [100 + i for i, bit in enumerate(_BITS) if file_perms.perm & bit]
    unshared = [200 + i for i, bit in enumerate(_BITS) if not file_perms.shared & bit]
    return _ranges(held + unshared)


def tool_perms(probe: str, fmt: str) -> Perms:
    """What a second process takes on the image's file node: blk_new_open shares
    everything; ``qemu-io`` (read-write) takes consistent-read and write, ``qemu-io -r``
    consistent-read; ``qemu-img info`` opens with BDRV_O_NO_IO (qemu-img.c
    collect_image_info_list), so it takes nothing and its qcow2 node adds no consistent-read
    either; the format's child role does the rest. With ``-U`` (force-share=on, which the
    file child inherits: block.c bdrv_inherited_options) the file node shares everything
    (block.c bdrv_child_perm: ``if (child_bs->force_share) *nshared = BLK_PERM_ALL``)."""
    if probe == QEMU_IO_RW:
        return file_child(fmt, Perms(CONSISTENT_READ | WRITE, ALL), writable=True)
    if probe in (QEMU_IO_RO, QEMU_IO_RO_U):
        perms = file_child(fmt, Perms(CONSISTENT_READ, ALL), writable=False)
    elif probe in (QEMU_IMG_INFO, QEMU_IMG_INFO_U):
        perms = file_child(fmt, Perms(0, ALL), writable=False)
        perms = Perms(perms.perm & ~CONSISTENT_READ, perms.shared)
    else:
        raise ValueError(f"unknown second-process probe {probe!r}")
    return Perms(perms.perm, ALL) if probe in (QEMU_IO_RO_U, QEMU_IMG_INFO_U) else perms


def refusal(held: Perms, wanted: Perms) -> str:
    """raw_check_lock_bytes: the lock error a process wanting *wanted* gets while another holds
    *held* on the same image ("" if it may open it)."""
    for bit in _BITS:
        if wanted.perm & bit and not held.shared & bit:
            return f'Failed to get "{NAMES[bit]}" lock'
    for bit in _BITS:
        if not wanted.shared & bit and held.perm & bit:
            return f'Failed to get shared "{NAMES[bit]}" lock'
    return ""


def second_open(probe: str, fmt: str, held: Perms, path: str, refused: str | None = None) -> str:
    """The whole message *probe* (one of steps.PROBES) prints for the image at *path*, "" if it
    opens it (qemu-io.c openfile "can't open device", qemu-img.c img_open_file "Could not
    open"). *refused*: the storage's strerror while it refuses writes (None: it accepts them);
    the tool runs where QEMU does (same mount namespace, same uid).

    A read-write probe on such storage fails at its own open (file-posix raw_open_common:
    qemu_open O_RDWR), before any lock is looked at; the read-only ones open O_RDONLY and
    then meet the locks (raw_check_lock_bytes, when their BlockBackend takes its permissions).
    """
    head = f"can't open device {path}" if probe.startswith("qemu-io") else f"Could not open '{path}'"
    if refused is not None and probe == QEMU_IO_RW:
        return f"{head}: Could not open '{path}': {refused}"
    err = refusal(held, tool_perms(probe, fmt))
    if not err:
        return ""
    return f"{head}: {err}\nIs another process using the image [{path}]?"
