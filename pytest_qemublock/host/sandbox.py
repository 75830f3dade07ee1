"""A private PID and network namespace for every process this pytest process starts.

The kernel, not the happy path, ends a dead run's processes: at session start
a tiny init is started in a new PID and network namespace (``setpriv
--pdeathsig KILL unshare --pid --net --fork --kill-child``), and then:

* every child (QEMU, servers, tools, what they fork, setgid helpers such as
  ssh-agent whose ``PR_SET_PDEATHSIG`` is cleared on exec) is started in that
  PID namespace. When its init dies, the kernel SIGKILLs all of them
  (kernel/pid_namespace.c ``zap_pid_ns_processes``), and the init dies with
  this process (the death-signal chain setpriv -> unshare -> init): a
  SIGKILLed pytest takes every process it started along;
* the main thread joins the network namespace for good: 127.0.0.1 is the
  sandbox's own loopback, so no other user of the machine can connect to a
  TCP server of the run, while this process (its listeners are created by the
  main thread) and its children reach them;
* pids seen from here stay host pids (``Popen.pid``, ``/proc/PID``), as /proc
  is still the host's mount.

``setns(CLONE_NEWPID)`` only sets the PID namespace of *future children*, and
while it differs from the caller's own, the kernel refuses to create a thread
(kernel/fork.c ``copy_process``: ``CLONE_THREAD`` -> EINVAL; execnet, asyncio
executors). So the switch is made per spawn, around
``subprocess.Popen._execute_child`` (every Popen of the process: ours,
testinfra's, execnet's), two ``setns()`` calls of a few microseconds; only the
run's own processes (started by ``process.py`` under :func:`ours`) go in.

Only root can ``setns()``; elsewhere :func:`enter` says why not, the state
journal (:func:`.process.reap_stale`) stays the only net for processes, and
TCP backends skip (:func:`loopback_shared`). (A per-spawn ``unshare --user
--pid --fork`` wrapper would give the pid of unshare, not of QEMU, to fdinfo.)

A child of the sandbox sees the host's /proc with its namespace pid: a pid it
reports (``$!``, a pid file) is not the host's, and a program that reads
``/proc/<its own pid>`` fails (see :meth:`Sandbox.outside`). ``/proc/self``
and the pids pytest gets from ``fork()`` are right.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import QemuBlockError
from . import procfs

_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# The namespace's pid 1: brings its loopback up, says so, then reaps orphans
# (a forking server's workers, once their master is gone) until it is killed.
# SIGCHLD stays blocked and is taken with sigwait(): no lost wake-up.
_INIT = r"""
import fcntl, os, signal, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP
s.close()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
os.write(1, b"ready\n")
os.close(1)
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    signal.sigwait({signal.SIGCHLD})
"""


class SandboxError(QemuBlockError):
    """The sandbox could not be set up or entered; the message is one line saying why."""


def _setns(fd: int, nstype: int, what: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise SandboxError(f"setns({what}): {os.strerror(ctypes.get_errno())}")


def _open_ns(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def ns_id(pid: int | str, kind: str) -> str | None:
    """``pid:[4026532177]``-style id of *pid*'s namespace of *kind* (None if it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan the parent pids
        out = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pid:
                    out.append(int(d.name))
            except OSError:
                continue
        return out


class Sandbox:
    """The PID + network namespace this process's children run in (see the module doc)."""

    def __init__(self, holder: subprocess.Popen[bytes], init_pid: int, setup_s: float) -> None:
        self.holder = holder  # unshare, outside; the init is its child
        self.init_pid = init_pid
        self.setup_s = setup_s
        self.pid_ns = ns_id(init_pid, "pid") or "?"
        self.net_ns = ns_id(init_pid, "net") or "?"
        self._pid_fd = _open_ns(f"/proc/{init_pid}/ns/pid")
        self._net_fd = _open_ns(f"/proc/{init_pid}/ns/net")
        self._outer_net_fd: int | None = None
        self.outer_net: str | None = None  # where we came from (the other users' network)
        self._local = threading.local()  # .outside: spawn outside (see outside())
        self.closed = False

    # -- per spawn ----------------------------------------------------------------
    def encloses(self) -> bool:
        """Children this thread starts now go into the sandbox (not closed, not :meth:`outside`)."""
        return not self.closed and not getattr(self._local, "outside", False)

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Children forked by this thread inside the block start in the sandbox."""
        if not self.encloses():
            yield
            return
        back_pid = _open_ns("/proc/thread-self/ns/pid_for_children")
        back_net = None
        try:
            if os.readlink("/proc/thread-self/ns/net") != self.net_ns:  # not the main thread
                back_net = _open_ns("/proc/thread-self/ns/net")
                _setns(self._net_fd, _CLONE_NEWNET, "sandbox net")
            _setns(self._pid_fd, _CLONE_NEWPID, "sandbox pid")
            try:
                yield
            finally:
                _setns(back_pid, _CLONE_NEWPID, "pid back")
                if back_net is not None:
                    _setns(back_net, _CLONE_NEWNET, "net back")
        finally:
            os.close(back_pid)
            if back_net is not None:
                os.close(back_net)

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Children this thread starts inside the block start in the host's PID namespace.

        In the sandbox a program sees the host's /proc with its namespace pid:
        one that names another of its threads (glibc ``pthread_setname_np``
        opens ``/proc/self/task/TID/comm`` with the namespace TID) gets
        ENOENT, and libgfapi (QEMU's gluster driver, loaded by the capability
        probe) SIGSEGVs on that. Such a child keeps its death signal and the
        journal, and still the sandbox's loopback.
        """
        was = getattr(self._local, "outside", False)
        self._local.outside = True
        try:
            yield
        finally:
            self._local.outside = was

    @contextlib.contextmanager
    def host_network(self) -> Iterator[None]:
        """Children forked by the main thread inside the block start in the host's network
        (not in the outer sandbox's loopback that a nested, in-process run came from)."""
        if self.closed or _host_net_fd is None or \
                os.readlink("/proc/thread-self/ns/net") != self.net_ns:
            yield
            return
        _setns(_host_net_fd, _CLONE_NEWNET, "host net")
        try:
            yield
        finally:
            _setns(self._net_fd, _CLONE_NEWNET, "sandbox net")

    # -- lifetime -------------------------------------------------------------------
    def join_network(self) -> None:
        """Move the calling (main) thread's sockets to the sandbox's network, for good."""
        self.outer_net = os.readlink("/proc/thread-self/ns/net")
        self._outer_net_fd = _open_ns("/proc/thread-self/ns/net")
        _setns(self._net_fd, _CLONE_NEWNET, f"/proc/{self.init_pid}/ns/net")

    def members(self) -> list[int]:
        """Host pids of live processes in the sandbox other than its init."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != self.init_pid and ns_id(d.name, "pid") == self.pid_ns:
                try:
                    state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if state not in ("Z", "X"):
                    out.append(int(d.name))
        return sorted(out)

    def close(self) -> list[int]:
        """End the sandbox and whatever still runs in it; returns the host pids that were alive."""
        if self.closed:
            return []
        left = self.members() if self.holder.poll() is None else []
        self.closed = True
        if self in _stack:
            _stack.remove(self)
        if self._outer_net_fd is not None:
            _libc.setns(self._outer_net_fd, _CLONE_NEWNET)
            os.close(self._outer_net_fd)
            self._outer_net_fd = None
        if self.holder.poll() is None:
            self.holder.kill()  # its death signal kills the init, and the kernel the rest
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(5)
        os.close(self._pid_fd)
        os.close(self._net_fd)
        return left

    def describe(self) -> str:
        return (f"qemublock: sandbox: children in PID namespace {self.pid_ns}, loopback of "
                f"network namespace {self.net_ns} (init pid {self.init_pid}, "
                f"{self.setup_s * 1000:.0f} ms to set up): they die with this process")


# The sandboxes entered, innermost last (an in-process pytester run nests one).
_stack: list[Sandbox] = []
#: the network this process started in, opened at its first sandbox (kept open for good)
_host_net_fd: int | None = None
_original_execute_child: Any = None


def _is_python(args: Any) -> bool:
    # A Python child of ours (an xdist worker, a pytester run) reads /proc/PID
    # with the pids its fork() returns: inside the sandbox those are namespace
    # pids and /proc is the host's, so it starts outside (host PID namespace and
    # network, as a run of its own would) and makes its own sandbox.
    try:
        first = os.fsdecode(args if isinstance(args, (str, bytes)) else args[0])
    except (IndexError, TypeError):
        return False
    return os.path.basename(first).startswith("python") or first == sys.executable


#: .on: the thread is starting a process of the run (process.py); .box: the sandbox
#: it promised that process (see ours())
_ours = threading.local()


@contextlib.contextmanager
def ours() -> Iterator[bool]:
    """Processes this thread starts inside the block are the run's own (QEMU, servers,
    tools: ``process.py`` starts them all): they go into the sandbox. Other programs
    (testinfra's ``ps``/``ss``, pip) start in the host's PID namespace: procps reads
    ``/proc/<its own pid>`` ("fatal library error, lookup self" in the sandbox).

    Yields whether they go in: then the kernel SIGKILLs them when the sandbox's init
    dies, which dies with this process, and they need no death signal of their own.
    Should the sandbox end before they start, the start fails (:class:`SandboxError`)
    rather than leave them without either."""
    box = _stack[-1] if _stack else None
    if box is not None and not box.encloses():
        box = None
    was = getattr(_ours, "on", False), getattr(_ours, "box", None)
    _ours.on, _ours.box = True, box
    try:
        yield box is not None
    finally:
        _ours.on, _ours.box = was


def _execute_child(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> Any:
    promised = getattr(_ours, "box", None) if getattr(_ours, "on", False) else None
    box = _stack[-1] if _stack else None
    if promised is not None:
        if box is not promised or not box.encloses():
            raise SandboxError("the sandbox ended while a process of the run was being started")
        with box.spawning():
            return _original_execute_child(self, args, *rest, **kwargs)
    if box is None:
        return _original_execute_child(self, args, *rest, **kwargs)
    if _is_python(args):
        with box.host_network():
            return _original_execute_child(self, args, *rest, **kwargs)
    if not getattr(_ours, "on", False):
        return _original_execute_child(self, args, *rest, **kwargs)
    with box.spawning():
        return _original_execute_child(self, args, *rest, **kwargs)


def _install() -> None:
    global _original_execute_child  # noqa: PLW0603 - set once, at the first install; read on every start
    if _original_execute_child is None:
        _original_execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
        subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]


def unavailable_reason() -> str | None:
    """Why :func:`enter` cannot work here (None if it can)."""
    if os.environ.get("QB_SANDBOX") == "off":
        return "QB_SANDBOX=off"
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "not root: setns() into a new PID/network namespace needs CAP_SYS_ADMIN"
    if not procfs.in_host_user_namespace():
        return ("uid 0 of a user namespace (unshare -r): setns() back into the host's PID "
                "namespace needs CAP_SYS_ADMIN in the host's user namespace")
    if threading.current_thread() is not threading.main_thread():
        return "not on the main thread, which creates the listening sockets"
    return None


def enter(timeout: float = 10.0, die_with_parent: bool = False) -> Sandbox:
    """Start the init; from now on children start in its namespaces (see the module doc).

    *die_with_parent* (an xdist worker, started outside its controller's
    sandbox as every Python child is): SIGKILL this process when the process
    that started it dies, so a SIGKILLed controller takes its workers'
    sandboxes along. Raises :class:`SandboxError` with a one-line reason.
    """
    reason = unavailable_reason()
    if reason:
        raise SandboxError(reason)
    t0 = time.monotonic()
    if die_with_parent:
        parent = os.getppid()
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)
    argv = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--pid", "--net", "--fork",
            "--kill-child=SIGKILL", "--", sys.executable, "-I", "-S", "-c", _INIT]
    try:
        holder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, process_group=0)
    except OSError as e:
        raise SandboxError(f"cannot start {argv[0]}: {e.strerror} (Debian package util-linux)") from None
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], timeout)
        if not ready or os.read(holder.stdout.fileno(), 64) != b"ready\n":
            holder.kill()
            _, err = holder.communicate(timeout=5)
            raise SandboxError("namespace init did not start: "
                               + (err.decode(errors="replace").strip().replace("\n", "; ") or "no output"))
        kids = _children(holder.pid)
        if len(kids) != 1:
            raise SandboxError(f"cannot find the namespace init (children of unshare: {kids})")
        for kind in ("pid", "net"):
            if ns_id(kids[0], kind) == ns_id("self", kind):
                raise SandboxError(f"the init (pid {kids[0]}) is not in a new {kind} namespace")
        box = Sandbox(holder, kids[0], 0.0)
        global _host_net_fd  # noqa: PLW0603 - set once, at the first sandbox of the process
        if _host_net_fd is None:
            _host_net_fd = _open_ns("/proc/thread-self/ns/net")
        box.join_network()
    except BaseException:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        raise
    box.setup_s = time.monotonic() - t0
    _install()
    _stack.append(box)
    return box


def loopback_shared() -> str | None:
    """Why a TCP server started now would be reachable by every user of the machine
    (a skip reason), or None when it listens in this process's sandbox."""
    if _stack and not _stack[-1].closed:
        return None
    why = unavailable_reason() or "it could not be set up: see the report header"
    return (f"no sandbox ({why}): a TCP server would listen on the host's 127.0.0.1, "
            "where every user of the machine can connect to it")


def try_enter(worker: bool = False) -> tuple[Sandbox | None, str]:
    """:func:`enter`, or None; and the report header's line saying which and why."""
    try:
        box = enter(die_with_parent=worker)
    except (SandboxError, OSError) as e:
        return None, (f"qemublock: no sandbox ({e}): a SIGKILLed run's processes are only reaped "
                      "by the next run (state journal); TCP backends skip")
    return box, box.describe()
