"""Expectations of the dynamic scenario (suites/test_dynamic.py).

file-posix with ``auto-read-only=on`` is *dynamic* since QEMU 4.0 (23dece19da,
QAPI feature ``dynamic-auto-read-only`` on BlockdevOptionsFile, c9d4070991):
the node keeps ``ro=false`` and its fd is O_RDONLY until a user takes the
WRITE permission, O_RDWR while one holds it, and O_RDONLY again once the
last one has left. The rules, from block/file-posix.c and block.c:

* ``raw_parse_flags()``: with BDRV_O_AUTO_RDONLY the fd is read-write iff
  ``has_writers`` (WRITE, WRITE_UNCHANGED or RESIZE taken by a parent);
  without it (auto-read-only=off) iff the node is read-write;
* ``raw_check_perm()`` -> ``raw_reconfigure_getfd()`` runs on every
  permission change: if the wanted flags differ from ``s->open_flags`` it
  opens a new fd (``qemu_open``, whose error is ``Could not open '<path>':
  <strerror>`` on storage that refuses writes), else it keeps the fd
  ("We're lucky, the existing fd is fine");
* ``bdrv_list_refresh_perms()``: a parent that does not share WRITE
  conflicts with a writer (``bdrv_parent_perms_conflict`` /
  ``bdrv_a_allow_b``, newest parent first), checked before the read-only
  check and before the driver opens anything;
* ``bdrv_node_refresh_perm()``: no WRITE on a read-only node (``Block node is
  read-only``; ``Read-only block node '<n>' cannot support read-write users``
  when a reopen to read-only meets a writer);
* users: an NBD export's BlockBackend shares everything (block/export/export.c
  ``blk_exp_add``: ``blk_new(ctx, perm, BLK_PERM_ALL)``); a guest device
  shares WRITE only with ``share-rw=on`` (hw/block/block.c
  ``blkconf_apply_backend_options``); scsi-cd and read-only exports take no
  WRITE.

:class:`Model` plays a step sequence through these rules and returns, for each
step, the expected :class:`~pytest_qemublock.scenario.outcome.Expect` with its
reason. Checked against 7.2.22 and 10.0.2; the conflict texts are block.c
``bdrv_a_allow_b``'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..backends.base import Target
from ..qemu.arch import Arch
from ..qemu.capabilities import Capabilities
from ..scenario.known_bugs import STALE_FLAGS_LAST_WRITER, KnownBug
from ..scenario.outcome import IMAGE, Expect
from ..scenario.steps import (
    EXPORT,
    EXPORT_RO,
    FILE_NODE,
    FMT_NODE,
    NBD_ADD,
    SCSI_CD,
    SCSI_HD,
    VIRTIO_BLK,
    Attach,
    Detach,
    Flip,
    ReadExport,
    Reopen,
    Step,
    User,
)
from .common import NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, dynamic, open_failed
from .locks import (
    ALL,
    CONSISTENT_READ,
    PROBES,
    RESIZE,
    WRITE,
    WRITE_UNCHANGED,
    Perms,
    file_child,
    lock_ranges,
    second_open,
    union,
)

#: commands each step kind needs (capability guards, not version numbers)
_COMMANDS = {EXPORT: "block-export-add", EXPORT_RO: "block-export-add", NBD_ADD: "nbd-server-add",
             SCSI_HD: "device_add", SCSI_CD: "device_add", VIRTIO_BLK: "device_add"}
_DETACH = {EXPORT: "block-export-del", EXPORT_RO: "block-export-del", NBD_ADD: "nbd-server-remove",
           SCSI_HD: "device_del", SCSI_CD: "device_del"}


def missing(steps: list[Step], caps: Capabilities, arch: Arch) -> str | None:
    """Why this build (of target *arch*) cannot run *steps* (a skip reason), or None."""
    if not dynamic(caps):
        return ("file-posix lacks the QAPI feature dynamic-auto-read-only (QEMU < 4.0): "
                "auto-read-only=on is not dynamic there, nothing to test")
    if arch.device_machine not in caps.machines:
        return (f"the build has no {arch.device_machine!r} machine (needed for "
                f"{arch.scsi_controller} / device_add)")
    need = {"nbd-server-start", "getfd", "blockdev-add"}
    for s in steps:
        if isinstance(s, Attach):
            need.add(_COMMANDS[s.user.kind])
            if s.user.kind in _DETACH:
                need.add(_DETACH[s.user.kind])
        elif isinstance(s, Reopen):
            need.add("blockdev-reopen")
    lacking = sorted(c for c in need if not caps.has_command(c))
    return f"the build has no QMP command {', '.join(lacking)}" if lacking else None


def _writes(u: User) -> bool:
    """Takes WRITE: writable exports and read-write devices (scsi-cd and ro exports do not)."""
    return u.kind in (EXPORT, NBD_ADD, SCSI_HD, VIRTIO_BLK)


def _shares_write(u: User) -> bool:
    """Exports share all permissions (blk_exp_add); devices share WRITE only with share-rw=on."""
    return u.kind in (EXPORT, EXPORT_RO, NBD_ADD) or u.share_rw


def _perms(u: User) -> Perms:
    """The permissions *u* takes on fmt0 and what it shares.

    Exports: nbd/server.c nbd_export_create takes consistent-read (+ write if
    writable) and shares everything but resize ("Don't allow resize while the NBD
    server is running"); devices: hw/block/block.c blkconf_apply_backend_options
    shares consistent-read, write-unchanged, resize if resizable (scsi-hd and
    virtio-blk; not scsi-cd: hw/scsi/scsi-disk.c scsi_realize passes
    ``dev->type == TYPE_DISK``) and write only with share-rw=on.
    """
    take = CONSISTENT_READ | (WRITE if _writes(u) else 0)
    if not u.is_device:
        return Perms(take, ALL & ~RESIZE)
    resizable = RESIZE if u.kind != SCSI_CD else 0
    return Perms(take, CONSISTENT_READ | WRITE_UNCHANGED | resizable | (WRITE if u.share_rw else 0))


def _parent_name(u: User) -> str:
    """How block.c names the user in a permission conflict (bdrv_child_user_desc)."""
    if not u.is_device:
        return "an unnamed block device"
    if u.kind == VIRTIO_BLK:
        # the BlockBackend belongs to the inner virtio-blk-device, which has no id
        return f"block device '/machine/peripheral/{u.id}/virtio-backend'"
    return f"block device '{u.id}'"


def _conflict_text(required: User, unshared: User) -> str:
    return (f"Permission conflict on node '{FMT_NODE}': permissions 'write' are both required by "
            f"{_parent_name(required)} (uses node '{FMT_NODE}' as 'root' child) and unshared by "
            f"{_parent_name(unshared)} (uses node '{FMT_NODE}' as 'root' child).")


def _ids(users: list[User]) -> str:
    return ", ".join(u.id for u in users)


@dataclass
class Model:
    """What fmt0 -> f0 (file, auto-read-only=on) does, step by step.

    fmt0 is raw (passes its users' permissions through) or qcow2 (takes write on
    f0 itself while writable: the fd is O_RDWR from the start, see locks.file_child).
    """

    target: Target
    caps: Capabilities
    fmt: str = "raw"  # fmt0's driver
    ro: bool = False  # f0's read-only flag
    aro: bool = True  # f0's auto-read-only flag
    users: list[User] = field(default_factory=list)  # attached, oldest first
    fd: str = O_RDONLY  # the mode of the fd QEMU holds
    recorded: str = O_RDONLY  # what file-posix believes it holds (s->open_flags)
    refuses: bool = False  # the storage refuses writes now
    opened_new: bool = False  # the last refresh opened a new fd
    stale_fd: str | None = None  # the fd QEMU keeps if the last step shows STALE_FLAGS_LAST_WRITER

    def __post_init__(self) -> None:
        if not dynamic(self.caps):
            raise ValueError("the dynamic model only describes builds with dynamic-auto-read-only")
        self.refuses = self.target.readonly
        if self.fmt_writes:
            self.fd = self.recorded = O_RDWR

    @property
    def fmt_writes(self) -> bool:
        """fmt0 itself takes WRITE on f0 (qcow2 metadata, bdrv_default_perms_for_metadata)."""
        return self.fmt != "raw"

    def file_perms(self) -> Perms:
        """What f0 holds for fmt0 and fmt0's users now."""
        return file_child(self.fmt, union(_perms(u) for u in self.users))

    def others(self) -> dict[str, str]:
        """What a second process (each of locks.PROBES) gets now: the storage's refusal for a
        read-write one while it refuses writes, else what QEMU's locks let it do."""
        path = str(self.target.fd_path)
        refused = self.target.error_text if self.refuses else None
        return {p: second_open(p, self.fmt, self.file_perms(), path, refused) for p in PROBES}

    # -- helpers -------------------------------------------------------------------------
    @property
    def writers(self) -> list[User]:
        return [u for u in self.users if _writes(u)]

    def wanted(self, users: list[User], ro: bool, aro: bool) -> str:
        """raw_parse_flags(): the fd mode for these flags and users."""
        if ro:
            return O_RDONLY
        if not aro:
            return O_RDWR
        return O_RDWR if self.fmt_writes or any(_writes(u) for u in users) else O_RDONLY

    def storage_text(self) -> str:
        return (f"{self.target.describe()} refuses writes" if self.refuses
                else f"{self.target.describe()} accepts writes")

    def expect(self, ok: bool, because: str, error: str | None = None, bug: KnownBug | None = None
               ) -> Expect:
        return Expect(ok, error, ro={FILE_NODE: self.ro, FMT_NODE: False},
                      fds={IMAGE: self.fd}, locks={IMAGE: lock_ranges(self.file_perms())},
                      others=self.others(), because=because, bug=bug)

    def bug_seen(self, bug: KnownBug) -> None:
        """QEMU showed *bug* at the last step: go on along the buggy timeline."""
        if bug is not STALE_FLAGS_LAST_WRITER or self.stale_fd is None:
            raise ValueError(f"the model predicts no known bug {bug.id} at the last step")
        # QEMU kept its O_RDWR fd while s->open_flags still says O_RDONLY: the next
        # refresh that wants O_RDWR opens a new fd and so heals the flags (see refresh()).
        self.fd, self.stale_fd = self.stale_fd, None

    def refresh(self, users: list[User], ro: bool, aro: bool) -> tuple[str | None, str, KnownBug | None]:
        """A permission refresh (raw_check_perm -> raw_reconfigure_getfd) with these users and flags.

        Returns (error, why, bug) and updates fd/recorded on success. ``bug`` is set where
        QEMU keeps a wrong fd because of stale ``s->open_flags`` (STALE_FLAGS_LAST_WRITER):
        the expectation is what a fixed build does; :meth:`bug_seen` switches to the fd QEMU
        kept.
        """
        want = self.wanted(users, ro, aro)
        self.stale_fd = None
        if want == self.recorded:
            if self.fd != want:
                self.stale_fd, self.fd = self.fd, want
                return None, f"raw_reconfigure_getfd should open a new {want} fd", STALE_FLAGS_LAST_WRITER
            return None, "the wanted mode equals file-posix's s->open_flags, so the fd is kept", None
        if want == O_RDWR and self.refuses:
            return (open_failed(self.target),
                    f"{self.storage_text()}: the O_RDWR open for the new fd fails "
                    "(file-posix raw_reconfigure_getfd -> util/osdep.c qemu_open_internal)", None)
        healed = (f" (s->open_flags said {self.recorded} although the fd is {self.fd}: the new fd "
                  f"heals the stale flags)" if self.fd == want else "")
        self.fd = self.recorded = want
        self.opened_new = True
        return None, f"raw_reconfigure_getfd opens a new {want} fd{healed}", None

    # -- the steps -----------------------------------------------------------------------
    def step(self, step: Step) -> Expect:
        if isinstance(step, Attach):
            return self.attach(step.user)
        if isinstance(step, Detach):
            return self.detach(step.id)
        if isinstance(step, Reopen):
            return self.reopen(step.ro, step.aro)
        if isinstance(step, ReadExport):
            if not any(u.id == step.id and u.kind in (EXPORT, EXPORT_RO, NBD_ADD) for u in self.users):
                raise ValueError(f"read through {step.id}: no such export in the sequence")
            return self.expect(True, f"an export of fmt0 serves the image's bytes; reading takes no "
                                     f"WRITE, the fd stays {self.fd}")
        if isinstance(step, Flip):
            if not step.writable and self.fd == O_RDWR and self.target.storage == "erofs":
                raise ValueError("remount read-only fails (EBUSY) while QEMU holds an O_RDWR fd")
            self.refuses = not step.writable
            return self.expect(True, f"only the storage changed ({self.storage_text()}); QEMU keeps its "
                                     f"{self.fd} fd until the permissions change")
        raise TypeError(f"unknown step {step!r}")

    def attach(self, user: User) -> Expect:
        writers = self.writers
        if _writes(user):
            # bdrv_parent_perms_conflict: a over parents (newest first), b over the others;
            # b's WRITE unshared by a -> "required by b, unshared by a".
            parents = [user, *reversed(self.users)]
            for a in parents:
                for b in parents:
                    if a is not b and _writes(b) and not _shares_write(a):
                        why = "no share-rw=on, hw/block/block.c blkconf_apply_backend_options"
                        return self.expect(
                            False, f"{a.id} does not share WRITE ({why}) and {b.id} needs it: block.c "
                                   f"bdrv_parent_perms_conflict refuses the new user before anything "
                                   f"is opened; the fd stays {self.fd}",
                            error=re.escape(_conflict_text(b, a)))
            if self.ro:
                return self.expect(False, f"f0 is read-only=on: no WRITE on it (block.c "
                                          f"bdrv_node_refresh_perm); the fd stays {self.fd}",
                                   error=NODE_IS_READ_ONLY)
            err, why, bug = self.refresh([*self.users, user], self.ro, self.aro)
            if err is not None:
                return self.expect(False, f"{why}; the attach is rolled back and the node stays usable "
                                          f"read-only with its {self.fd} fd (the new fd's open failed in "
                                          f"raw_check_perm, so file-posix keeps the old one)", error=err)
            self.users.append(user)
            if self.fmt_writes:
                why = f"{self.fmt} fmt0 itself already writes (metadata): the fd is already {self.fd}"
            elif writers:
                why = (f"{_ids(writers)} already write(s): the fd is already {self.fd}" if self.fd == O_RDWR
                       else why)
            else:
                why = (f"the first writer takes WRITE; with auto-read-only=on file-posix needs a "
                       f"read-write fd now: {why}" if self.aro else f"auto-read-only=off: {why}")
            return self.expect(True, why, bug=bug)
        # readers: scsi-cd, read-only export. One that does not share WRITE meets the newest writer.
        if writers and not _shares_write(user):
            w = writers[-1]
            return self.expect(False, f"{user.id} does not share WRITE and {w.id} writes: block.c "
                                      f"bdrv_parent_perms_conflict refuses the new user; the fd stays "
                                      f"{self.fd}", error=re.escape(_conflict_text(w, user)))
        self.users.append(user)
        return self.expect(True, f"{user} takes no WRITE (CONSISTENT_READ only): no fd change, "
                                 f"the fd stays {self.fd}")

    def detach(self, id: str) -> Expect:
        user = next((u for u in self.users if u.id == id), None)
        if user is None:
            raise ValueError(f"detach {id}: the sequence never attached it")
        remaining = [u for u in self.users if u is not user]
        self.users = remaining
        before = self.fd
        err, why, bug = self.refresh(remaining, self.ro, self.aro)
        assert err is None, "dropping permissions never needs a new O_RDWR fd in these sequences"
        left = [u for u in remaining if _writes(u)]
        if self.fmt_writes:
            because = f"{self.fmt} fmt0 itself keeps WRITE on f0 (metadata): the fd stays {self.fd}"
        elif left:
            because = f"{_ids(left)} still write(s): the fd stays {self.fd}"
        elif not self.aro and not self.ro:
            because = f"auto-read-only=off: the fd stays read-write without writers too; {why}"
        elif _writes(user):
            because = (f"the last writer left (event received): no WRITE/WRITE_UNCHANGED/RESIZE "
                       f"remains, so dynamic auto-read-only goes back to O_RDONLY: {why}")
        else:
            because = f"{user} held no WRITE: the fd stays {before}"
        return self.expect(True, because, bug=bug)

    def reopen(self, ro: bool, aro: bool) -> Expect:
        opts = f"{{read-only: {str(ro).lower()}, auto-read-only: {str(aro).lower()}}}"
        writers = self.writers
        if ro and (writers or self.fmt_writes):
            who = _ids(writers) if writers else f"{self.fmt} fmt0 (metadata writes)"
            return self.expect(False, f"reopen {opts} with {who} writing: block.c "
                                      f"bdrv_node_refresh_perm refuses, the reopen is aborted and the fd "
                                      f"stays {self.fd} (bdrv_reopen_abort)",
                               error=re.escape(f"Read-only block node '{FILE_NODE}' cannot support "
                                               f"read-write users"))
        self.opened_new = False
        err, why, bug = self.refresh(self.users, ro, aro)
        if err is not None:
            return self.expect(False, f"reopen {opts} (blockdev-reopen resets omitted options to their "
                                      f"defaults) needs an O_RDWR fd: {why}; bdrv_reopen_abort keeps "
                                      f"the node and its {self.fd} fd", error=err)
        self.ro, self.aro = ro, aro
        if not self.opened_new:
            # raw_reopen_commit() leaves s->open_flags = 0 = O_RDONLY (STALE_FLAGS_LAST_WRITER);
            # harmless while the fd is O_RDONLY, a trap once it is O_RDWR.
            self.recorded = O_RDONLY
        if ro:
            because = f"read-only=on: f0 ro=true with an O_RDONLY fd; {why}"
        elif not aro:
            because = (f"auto-read-only=off: a read-write node keeps an O_RDWR fd whether or not "
                       f"anyone writes; {why}")
        elif writers or self.fmt_writes:
            who = _ids(writers) if writers else f"{self.fmt} fmt0 (metadata writes)"
            because = f"auto-read-only=on with {who} writing: the fd stays O_RDWR; {why}"
        else:
            because = f"auto-read-only=on and no writer: dynamic mode, O_RDONLY fd; {why}"
        return self.expect(True, because, bug=bug)
