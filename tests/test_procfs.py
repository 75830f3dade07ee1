"""host/procfs against the kernel: descriptors, lock ranges, process states."""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess

from pytest_qemublock.host import procfs


def _ofd_lock(fd: int, kind: int, start: int, length: int) -> None:
    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (0 for OFD)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0))


def test_fd_modes_name_each_descriptor_of_the_path(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(b"\0" * 4096)
    link = tmp_path / "link"
    link.symlink_to(path)
    ro = os.open(path, os.O_RDONLY)
    rw = os.open(link, os.O_RDWR)  # the kernel shows the resolved path
    try:
        assert procfs.fd_modes(os.getpid(), path) == ["O_RDONLY", "O_RDWR"]
        assert procfs.fd_modes(os.getpid(), link) == ["O_RDONLY", "O_RDWR"]
        assert procfs.fd_modes(os.getpid(), tmp_path / "other") == []
    finally:
        os.close(ro)
        os.close(rw)
    assert procfs.fd_modes(os.getpid(), path) == []


def test_locks_are_whole_ranges_as_the_kernel_merged_them(tmp_path):
    """QEMU locks its permission bytes one by one; the kernel shows adjacent ones
    of one open file as one range (``100 101``)."""
    path = tmp_path / "image"
    path.write_bytes(b"\0" * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        _ofd_lock(fd, fcntl.F_RDLCK, 100, 1)
        _ofd_lock(fd, fcntl.F_RDLCK, 101, 1)
        _ofd_lock(fd, fcntl.F_WRLCK, 200, 1)
        _ofd_lock(fd, fcntl.F_RDLCK, 300, 0)  # to the end of the file
        locks = sorted(procfs.locks_on(path), key=lambda lk: lk.start)
        assert [(lk.kind, lk.access, lk.start, lk.end) for lk in locks] == [
            ("OFDLCK", "READ", 100, 101), ("OFDLCK", "WRITE", 200, 200), ("OFDLCK", "READ", 300, None)]
        assert locks[0].covers(101) and not locks[0].covers(102) and locks[2].covers(1 << 40)
    finally:
        os.close(fd)
    assert procfs.locks_on(path) == []


def test_fd_locks_are_the_locks_of_one_open_file_only(tmp_path):
    """fdinfo names the owner: another open file's locks on the same inode are left out."""
    path = tmp_path / "image"
    path.write_bytes(b"\0" * 4096)
    mine, other = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        _ofd_lock(mine, fcntl.F_RDLCK, 100, 2)
        _ofd_lock(mine, fcntl.F_RDLCK, 203, 1)
        _ofd_lock(other, fcntl.F_RDLCK, 201, 1)
        got = [(lk.kind, lk.access, lk.start, lk.end) for lk in procfs.fd_locks(os.getpid(), mine)]
        assert got == [("OFDLCK", "READ", 100, 101), ("OFDLCK", "READ", 203, 203)]
        assert [lk.start for lk in procfs.fd_locks(os.getpid(), other)] == [201]
    finally:
        os.close(mine)
        os.close(other)
    assert procfs.fd_locks(os.getpid(), mine) == []


def test_process_states_and_groups():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        st = procfs.stat(proc.pid)
        assert st is not None and st.running and st.pgid == proc.pid
        assert procfs.start_ticks(proc.pid) == st.start_ticks
        assert procfs.group_pids(proc.pid) == [proc.pid]
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # a zombie until reaped
        assert procfs.stat(proc.pid).state == "Z" and not procfs.running(proc.pid)
        assert procfs.group_pids(proc.pid) == []
    finally:
        proc.kill()
        proc.wait()
    assert procfs.stat(proc.pid) is None and not procfs.running(proc.pid)
