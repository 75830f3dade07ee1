"""The one reader of the kernel's process facts (``/proc``).

QMP cannot show everything: file-posix with ``auto-read-only=on`` reports
``ro: false`` even when its file descriptor is ``O_RDONLY``. The kernel's
view (``/proc/PID/fdinfo``, ``/proc/locks``, process states, sockets) is the
ground truth, so the plugin and the suites read it here, and nowhere else.

These reads sit on hot paths (every open case reads fd modes; every stop
checks process states), so they are direct file reads: a shell round trip
through testinfra's local backend cost 10.4 ms per fd read, a direct read
0.04 ms. psutil is used where its view is the right one (pids, process
groups); it is not used for open files, because ``Process.open_files()``
drops every descriptor whose path is not a regular file *in our mount
namespace*, and QEMU on erofs storage opens its images inside a private one.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

O_ACCMODE = 0o3
_MODES = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}


# -- process state -------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the plugin needs."""

    state: str  # R, S, D, Z (zombie), X (dead), ...
    pgid: int
    start_ticks: str  # clock ticks after boot; tells a pid from a reused one

    @property
    def running(self) -> bool:
        """Exists and is not a zombie (dead, waiting to be reaped)."""
        return self.state not in ("Z", "X")


def stat(pid: int) -> ProcStat | None:
    """Process *pid*'s state, group and start time; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after
    # its last ")". Then field 3 is [0], field 5 (pgrp) [2], field 22 (starttime) [19].
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(fields[0], int(fields[2]), fields[19])


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting to be reaped)."""
    st = stat(pid)
    return st is not None and st.running


def start_ticks(pid: int) -> str | None:
    """Process start time in clock ticks, to recognise pid reuse."""
    st = stat(pid)
    return st.start_ticks if st is not None else None


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group *pgid* (a server and its workers)."""
    out = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:  # a syscall: no /proc read for strangers
                continue
        except OSError:
            continue
        if running(pid):
            out.append(pid)
    return out


def mount_namespace(pid: int | str) -> str | None:
    """The ``mnt:[inode]`` id of *pid*'s (or ``"self"``'s) mount namespace."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def command_name(pid: int) -> str | None:
    """The process's ``comm`` (its executable's name, at most 15 bytes)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def namespace_pids(ns: str) -> list[int]:
    """Live processes whose mount namespace is *ns*."""
    return sorted(pid for pid in psutil.pids() if mount_namespace(pid) == ns and running(pid))


#: ``/proc/self/uid_map`` of the host's (initial) user namespace: every uid maps to itself
_IDENTITY_MAP = [(0, 0, 4294967295)]


def _uid_map() -> list[tuple[int, int, int]]:
    try:
        with open("/proc/self/uid_map") as f:
            return [(int(a), int(b), int(n)) for a, b, n in (ln.split() for ln in f if ln.strip())]
    except (OSError, ValueError):
        return _IDENTITY_MAP


def in_host_user_namespace() -> bool:
    """True unless this process runs in a user namespace (``unshare -r``), where uid 0 is
    a user's own uid and the uids of everybody else are not mapped."""
    return _uid_map() == _IDENTITY_MAP


def outer_uid(uid: int) -> int:
    """*uid* as the parent user namespace sees it (itself in the host's namespace)."""
    for inside, outside, count in _uid_map():
        if inside <= uid < inside + count:
            return outside + uid - inside
    return uid


def sysctl(name: str) -> str | None:
    """The value of sysctl *name* (``kernel.foo``), None where this kernel has none."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def mount_fstype(mountpoint: str) -> str | None:
    """The file system type mounted at *mountpoint* (``tmpfs``...), ``None`` if none is."""
    try:
        parts = psutil.disk_partitions(all=True)
    except OSError:
        return None
    return next((p.fstype for p in parts if p.mountpoint == mountpoint), None)


# -- open files ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenFile:
    """One descriptor of a process and its ``open()`` flags (``/proc/PID/fdinfo``)."""

    fd: int
    path: str
    flags: int

    @property
    def mode(self) -> str:
        return _MODES.get(self.flags & O_ACCMODE, f"mode{self.flags & O_ACCMODE}")

    def __str__(self) -> str:
        return f"fd{self.fd}:{self.mode}(flags=0{self.flags:o})"


def _fd_flags(pid: int, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def open_files(pid: int, path: str | Path) -> list[OpenFile]:
    """Descriptors of process *pid* that point at *path* (as that process sees it).

    Raises :class:`ProcessLookupError` if the process is gone; an fd closed
    while the table is read is simply left out.
    """
    wanted = {str(path)}
    if os.path.exists(path):
        wanted.add(os.path.realpath(path))
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} is gone") from None
    out = []
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        # fdinfo only for the matches: one readlink per fd is the whole cost otherwise
        if link in wanted and (flags := _fd_flags(pid, fd)) is not None:
            out.append(OpenFile(int(fd), link, flags))
    return sorted(out, key=lambda f: f.fd)


def fd_modes(pid: int, path: str | Path) -> list[str]:
    """Access modes (``O_RDONLY``/``O_RDWR``) of *pid*'s descriptors for *path*."""
    return [f.mode for f in open_files(pid, path)]


# -- locks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileLock:
    """One byte-range lock of ``/proc/locks``.

    The kernel merges adjacent locked bytes of one owner into one range
    (QEMU's permission bytes 100 and 101 show as ``100 101``), so a lock is a
    whole range, never a single byte.
    """

    kind: str  # OFDLCK (QEMU's image locks), POSIX, FLOCK, ...
    access: str  # READ or WRITE
    start: int
    end: int | None  # inclusive; None: to the end of the file
    pid: int  # -1 for OFD locks (they belong to an open file, not a process)

    def covers(self, offset: int) -> bool:
        return self.start <= offset and (self.end is None or offset <= self.end)

    def __str__(self) -> str:
        return f"{self.kind} {self.access} {self.start}-{'EOF' if self.end is None else self.end}"


def locks_on(path: str | Path) -> list[FileLock]:
    """The locks held on *path*'s inode (QEMU's OFD image locks); waiters left out."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    with open("/proc/locks", "rb") as f:
        text = f.read().decode("ascii", "replace")
    for line in text.splitlines():
        # "1: OFDLCK ADVISORY  READ -1 00:1b:87410 100 101"; "1: -> ..." is a blocked waiter
        cols = line.split()
        if len(cols) < 8 or cols[1] == "->" or cols[5] != dev:
            continue
        out.append(FileLock(cols[1], cols[3], int(cols[6]),
                            None if cols[7] == "EOF" else int(cols[7]), int(cols[4])))
    return out


def fd_locks(pid: int, fd: int) -> list[FileLock]:
    """The locks held through one open file description: the ``lock:`` lines of
    ``/proc/PID/fdinfo/FD`` (fs/locks.c locks_show_fdinfo), sorted by offset.

    Unlike :func:`locks_on` this names the owner (QEMU's own fd, not whoever else
    locks the inode) and is one short read: ``/proc/locks`` is a seq_file read in
    several chunks, which under load can repeat lines at a chunk boundary (seen:
    ``100 100 201 201 203``).
    """
    out: list[FileLock] = []
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        # "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:2150377 100 101"
        if not line.startswith("lock:"):
            continue
        cols = line.split()[1:]
        if len(cols) < 8 or cols[1] == "->":
            continue
        out.append(FileLock(cols[1], cols[3], int(cols[6]),
                            None if cols[7] == "EOF" else int(cols[7]), int(cols[4])))
    return sorted(out, key=lambda lk: lk.start)


# -- sockets ---------------------------------------------------------------------------


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process *pid* has open."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _hex_addr(text: str) -> str:
    """``0100007F`` (/proc/net/tcp, little-endian words) -> ``127.0.0.1``; IPv6 likewise."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def tcp_listeners(pids: list[int] | int) -> list[tuple[str, int]]:
    """``(address, port)`` of every listening TCP socket (IPv4 and IPv6) held by *pids*.

    Read from ``/proc/PID/net/tcp*`` (the pid's network namespace) and the fd
    tables, so it works without ``ss`` and for processes in another mount
    namespace.
    """
    pids = [pids] if isinstance(pids, int) else list(pids)
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    found: list[tuple[str, int]] = []
    if not inodes:
        return found
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # TCP_LISTEN
                continue
            if int(cols[9]) in inodes:
                addr, port = cols[1].split(":")
                found.append((_hex_addr(addr), int(port, 16)))
    return sorted(set(found))
