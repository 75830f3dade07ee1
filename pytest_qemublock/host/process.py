"""Starting and reliably stopping helper processes.

Every process the plugin starts goes through :class:`ProcessRegistry.spawn`.
Cleanup must not depend on the happy path (a crashed probe that leaves a
``qemu-nbd`` holding an image lock is the classic harness bug), so there are
four independent safety nets:

1. the owning fixture stops its processes at teardown;
2. the registry kills whatever is left at session end, at interpreter exit
   and on SIGTERM;
3. each child runs in its own process group, in the run's PID namespace
   (``sandbox.py``: the kernel kills it with the namespace's init, which dies
   with this process) or, without one, with ``PR_SET_PDEATHSIG``: even a
   SIGKILLed pytest takes its QEMUs with it;
4. a journal (``journal.py``) records the live pids so that the next run can
   reap anything that survived an earlier, harder crash.
"""
from __future__ import annotations

import atexit
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from . import sandbox
from .commands import ProcessError as ProcessError
from .commands import describe_status as describe_status
from .commands import format_argv as format_argv
from .commands import popen_args
from .commands import run as run
from .journal import RUN_ENV, StateDir, StateJournal, new_token
from .listeners import socket_address
from .procfs import start_ticks
from .started import STARTED as STARTED
from .started import StartCounter as StartCounter
from .started import program_of


@dataclass
class ManagedProcess:
    """A child process with its log files and command line kept for evidence."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    env_delta: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    stop_expected: bool = False
    start_ticks: str | None = None  # /proc start time, to tell the pid from a reused one
    #: it exited before anyone asked it to (a crash, unless death_noted says otherwise)
    died_unasked: bool = False
    #: why its death is accounted for (expected, refused start-up, already reported)
    death_noted: str = ""
    #: inherited fd -> the socket it is (``listeners.socket_address``), for the evidence
    sockets: dict[int, str] = field(default_factory=dict)
    #: the registry that started it; told once the process is reaped
    registry: ProcessRegistry | None = field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    # The leader's pid is the group id. Once the leader is reaped the pid can
    # be reused (pid_max is often 32768), and killpg() would hit a stranger's
    # process group. So exits are detected with WNOWAIT, the group is killed
    # while the leader is still a zombie, and only then is it reaped.

    @property
    def returncode(self) -> int | None:
        if self._exited():
            return self._reap()
        return None

    def alive(self) -> bool:
        return self.returncode is None

    def _exited(self) -> bool:
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back (Popen internals)
            return True
        return info is not None

    def _reap(self) -> int:
        if not self.stop_expected:
            self.died_unasked = True
        if self.popen.returncode is None:
            self._signal_group(signal.SIGKILL)  # leftovers of wrappers; pid still ours
        status = self.popen.wait()
        # Reaped (stopped, killed or exited): the registry must not hold dead processes.
        if self.registry is not None:
            self.registry.forget(self)
        return status

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to *timeout* s for the process to exit, without reaping it."""
        if self._exited():
            return True
        try:
            # Readable once the process has exited (zombie or not): no polling loop.
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # kernel < 5.3, or the pid went meanwhile
            pidfd = None
        if pidfd is not None:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll(max(0, int(timeout * 1000)))
            finally:
                os.close(pidfd)
            return self._exited()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not self._exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def wait(self, timeout: float) -> int:
        """Wait for exit; raises :class:`ProcessError` after *timeout* seconds."""
        if not self.wait_exit(timeout):
            raise ProcessError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:.1f}s: "
                f"{format_argv(self.argv)}"
            )
        return self._reap()

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM the process group, then SIGKILL it. Always reaps the child."""
        self._note_unasked()
        self.stop_expected = True
        killed = False
        if not self._exited():
            self._signal_group(signal.SIGTERM)
            if not self.wait_exit(timeout):
                killed = True
                self._signal_group(signal.SIGKILL)
                if not self.wait_exit(timeout):  # pragma: no cover - unkillable (D state)
                    raise ProcessError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        status = self._reap()
        if status < 0 and status != -signal.SIGTERM and not killed:
            # another signal than ours ended it: it was dying already (a SIGKILL still
            # reaping its threads) or crashed on SIGTERM
            self.died_unasked = True
        return status

    def kill(self) -> None:
        self._note_unasked()
        self.stop_expected = True
        if not self._exited():
            self._signal_group(signal.SIGKILL)
            self.wait_exit(5)
        if self._exited():
            self._reap()

    def _note_unasked(self) -> None:
        # stopping a process that already died must not hide that it died on its own
        if not self.stop_expected and self._exited():
            self.died_unasked = True

    def _signal_group(self, sig: int) -> None:
        if self.popen.returncode is not None:
            return  # reaped: the pid may belong to someone else by now
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stderr_text(self, limit: int = 20000) -> str:
        return _tail(self.stderr_path, limit)

    def stdout_text(self, limit: int = 20000) -> str:
        return _tail(self.stdout_path, limit)

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, {describe_status(self.returncode)})"

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env_delta.items())
        return (env + " " if env else "") + format_argv(self.argv)


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class ProcessRegistry:
    """Owns every child process of this pytest process (one per xdist worker)."""

    def __init__(self, state: StateDir | None = None, token: str | None = None) -> None:
        self._lock = threading.Lock()
        self._procs: list[ManagedProcess] = []
        #: journal of live processes for the next run to reap (None: not kept)
        self._state = state
        #: marks every process this registry starts (``QEMUBLOCK_RUN``), so that a
        #: later run only ever kills processes that provably are this run's
        self.token = token or new_token()
        self._journal: StateJournal | None = None
        self._counter = 0
        self._installed = False

    # -- lifecycle ---------------------------------------------------------
    def install(self) -> None:
        """Register the interpreter-exit and SIGTERM safety nets."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.kill_all)
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum: int, frame: FrameType | None) -> None:
                self.kill_all()
                if callable(previous):
                    previous(signum, frame)
                # Let pytest unwind like on Ctrl-C: teardowns and sessionfinish run.
                raise KeyboardInterrupt("SIGTERM")

            signal.signal(signal.SIGTERM, on_sigterm)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        pass_fds: Iterable[int] = (),
        cwd: Path | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        program: str | None = None,
    ) -> ManagedProcess:
        """Start *argv*; stdout/stderr go to files in *log_dir* named after *name*.

        *env* holds variables added to the current environment; they are
        recorded so the evidence shows a reproducible command line. *program*
        is what the start counts as in :data:`STARTED` when *argv* wraps it
        (``nsenter ... -- qemu-system-x86_64``); default: ``argv[0]``'s basename.
        """
        argv = [str(a) for a in argv]
        pass_fds = tuple(pass_fds)
        with self._lock:
            self._counter += 1
            seq = self._counter
        log_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{seq:03d}-{name}"
        out_path = log_dir / f"{stem}.stdout"
        err_path = log_dir / f"{stem}.stderr"
        env_delta = dict(env or {})
        full_env = {**os.environ, RUN_ENV: self.token, **env_delta}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                with sandbox.ours() as enclosed:  # the run's own: into its sandbox, if there is one
                    run_argv, how = popen_args(argv, enclosed)
                    popen = subprocess.Popen(  # type: ignore[call-overload]
                        run_argv, stdin=stdin, stdout=out, stderr=err, env=full_env, cwd=cwd,
                        pass_fds=pass_fds, close_fds=True, **how)
            except OSError as e:
                raise ProcessError(f"cannot start {name}: {e.strerror}: {format_argv(argv)}") from None
        STARTED.note(program_of(argv, program))
        sockets = {fd: addr for fd in pass_fds if (addr := socket_address(fd)) is not None}
        proc = ManagedProcess(name, argv, popen, out_path, err_path, env_delta,
                              start_ticks=start_ticks(popen.pid), sockets=sockets, registry=self)
        with self._lock:
            self._procs.append(proc)
        self._write_state()
        return proc

    def forget(self, proc: ManagedProcess) -> None:
        """Stop tracking *proc* (done by the process itself once it is reaped)."""
        with self._lock:
            if proc not in self._procs:
                return
            self._procs.remove(proc)
        self._write_state()

    def live(self) -> list[ManagedProcess]:
        with self._lock:
            procs = list(self._procs)
        # alive() may reap, and a reaped process forgets itself (takes the lock)
        return [p for p in procs if p.alive()]

    def tracked(self) -> list[ManagedProcess]:
        """Every process still registered (not yet reaped)."""
        with self._lock:
            return list(self._procs)

    def kill_all(self) -> list[ManagedProcess]:
        """Kill every process still registered; returns those that were alive."""
        with self._lock:
            procs = list(self._procs)
            self._procs.clear()
        alive = [p for p in procs if p.alive()]
        for p in procs:
            p.kill()
        self._write_state()
        return alive

    # -- crash recovery ------------------------------------------------------
    def _write_state(self) -> None:
        if self._state is None:
            return
        with self._lock:
            live = {p.pid: p for p in self._procs if p.popen.returncode is None}
            try:
                if self._journal is None:
                    self._journal = StateJournal(self._state, self.token)
                self._journal.sync(live)
            except OSError:
                pass
