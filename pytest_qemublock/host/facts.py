"""Host-side facts read through testinfra's ``host``.

QMP cannot show everything: file-posix with ``auto-read-only=on`` reports
``ro: false`` even when its file descriptor is ``O_RDONLY``. The kernel's view
(``/proc/PID/fdinfo``, ``/proc/locks``, listening sockets, processes) is
the ground truth, so the suites read it here.
"""
from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import testinfra
from testinfra.backend.local import LocalBackend

from .process import STARTED, running

O_ACCMODE = 0o3
_MODES = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}

# testinfra's local backend has no timeout of its own (anchors.md §2);
# coreutils' timeout bounds every command it runs for us.
_TIMEOUT = "timeout 20"


class _CountedLocalBackend(LocalBackend):  # type: ignore[misc]  # testinfra has no type hints
    # testinfra starts its commands itself (``/bin/sh -c``), not through
    # process.run: count each here, where the other starts are counted.
    def run_local(self, command: str, *args: str) -> testinfra.backend.base.CommandResult:
        STARTED.note("sh")
        return super().run_local(command, *args)


@functools.lru_cache(maxsize=1)
def local_host() -> testinfra.host.Host:
    """The testinfra host for this machine."""
    return testinfra.host.Host(_CountedLocalBackend())


@dataclass(frozen=True)
class OpenFile:
    fd: int
    path: str
    flags: int

    @property
    def mode(self) -> str:
        return _MODES.get(self.flags & O_ACCMODE, f"mode{self.flags & O_ACCMODE}")

    def __str__(self) -> str:
        return f"fd{self.fd}:{self.mode}(flags=0{self.flags:o})"


def open_files(pid: int, path: str | Path) -> list[OpenFile]:
    """Descriptors of process *pid* that point at *path* (as that process sees it)."""
    target = os.path.realpath(path) if os.path.exists(path) else str(path)
    # One shell round trip, two processes for the whole fd table (a readlink and a sed
    # per fd cost ~40 ms on a QEMU with 30 fds): find prints every link, grep every
    # fdinfo's flags; an fd closed in between is simply left out.
    script = (
        f"cd /proc/{pid}/fd 2>/dev/null || exit 3; "
        "find . -mindepth 1 -maxdepth 1 -printf '%f\\t%l\\n' 2>/dev/null; echo @@; "
        "cd ../fdinfo 2>/dev/null && grep -H '^flags:' -- * 2>/dev/null; exit 0"
    )
    res = local_host().run(f"{_TIMEOUT} sh -c {shlex.quote(script)}")
    if res.rc == 3:
        raise ProcessLookupError(f"process {pid} is gone")
    links_text, _, flags_text = res.stdout.partition("@@\n")
    flags = {}
    for line in flags_text.splitlines():
        fd, _, rest = line.partition(":flags:")
        if rest.strip():
            flags[fd] = int(rest.strip(), 8)
    out = []
    for line in links_text.splitlines():
        fd, _, link = line.partition("\t")
        if fd in flags and (link == target or link == str(path)):
            out.append(OpenFile(int(fd), link, flags[fd]))
    return out


def fd_modes(pid: int, path: str | Path) -> list[str]:
    """Access modes (``O_RDONLY``/``O_RDWR``) of *pid*'s descriptors for *path*."""
    return [f.mode for f in open_files(pid, path)]


def locks_on(path: str | Path) -> list[str]:
    """Lines of ``/proc/locks`` that lock *path*'s inode (QEMU's OFD image locks)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    content = local_host().file("/proc/locks").content_string
    return [line for line in content.splitlines() if f" {dev} " in line]


def listening(spec: str) -> bool:
    """Whether a socket like ``tcp://127.0.0.1:10809`` or ``unix:///path`` listens."""
    return local_host().socket(spec).is_listening


def pid_alive(pid: int) -> bool:
    """A process exists (and is not a zombie)."""
    return running(pid)


def processes_named(*names: str) -> list[str]:
    """``pid comm args`` of live processes whose command is one of *names*."""
    host = local_host()
    out = []
    for name in names:
        for p in host.process.filter(comm=name[:15]):
            out.append(f"{p.pid} {p.comm} {p.args}")
    return out
