"""QEMU processes (qemu-system and qemu-storage-daemon) with a QMP monitor.

QMP runs over a ``socketpair``: QEMU gets one end as ``-chardev socket,fd=N``.
There is no socket path to collide between xdist workers, nothing to poll
for, and readiness is the QMP greeting itself. If QEMU exits during start-up
(an option it refuses), the socket hangs up at once and
:class:`~pytest_qemublock.errors.LaunchError` carries the exit status and
stderr.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..evidence import TestEvidence
from ..host.process import ManagedProcess, ProcessError, ProcessRegistry, describe_status, format_argv
from .build import QemuBuild
from .crashes import crash_line
from .crashes import current as current_watch
from .qmp import QmpCommandError, QmpError, QmpSession, QmpTimeout


class LaunchError(ProcessError):
    """A QEMU process exited or stopped answering before QMP was ready.

    Carries the command line and the process's stderr so the report shows *why*.
    """

    def __init__(self, message: str, argv: list[str], exitcode: int | None, stderr: str) -> None:
        self.argv = argv
        self.exitcode = exitcode
        self.stderr = stderr
        super().__init__(message)

    def __str__(self) -> str:
        lines = [self.args[0], f"  command: {format_argv(self.argv)}"]
        if self.exitcode is not None:
            lines.append(f"  status: {describe_status(self.exitcode)}")
        if self.stderr.strip():
            lines.append("  stderr: " + self.stderr.strip().replace("\n", "\n          "))
        return "\n".join(lines)


@dataclass(frozen=True)
class Timeouts:
    """Every wait's limit in seconds, already multiplied by ``--qb-timeout-factor``."""

    factor: float = 1.0
    launch: float = 30.0
    qmp: float = 30.0
    event: float = 30.0
    shutdown: float = 10.0
    tool: float = 60.0

    @classmethod
    def scaled(cls, factor: float) -> Timeouts:
        base = cls()
        return cls(factor, base.launch * factor, base.qmp * factor, base.event * factor,
                   base.shutdown * factor, base.tool * factor)


@dataclass(frozen=True)
class Wrapper:
    """How to run a process: a command prefix (nsenter, setpriv...) and extra env.

    Storage providers hand one out, so that QEMU sees read-only storage
    without the suite knowing how that is arranged.
    """

    prefix: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    label: str = ""

    def __add__(self, other: Wrapper) -> Wrapper:
        return Wrapper(self.prefix + other.prefix, {**self.env, **other.env},
                       "+".join(x for x in (self.label, other.label) if x))


class QemuInstance:
    """A running QEMU with its QMP session. Use :meth:`execute` & co. from tests."""

    def __init__(self, name: str, kind: str, build: QemuBuild, proc: ManagedProcess,
                 qmp: QmpSession, timeouts: Timeouts) -> None:
        self.name = name
        self.kind = kind  # "system" or "qsd"
        self.build = build
        self.proc = proc
        self.qmp = qmp
        self.timeouts = timeouts
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def argv(self) -> list[str]:
        return self.proc.argv

    # -- QMP, with QEMU's death turned into a readable failure ---------------
    def execute(self, command: str, arguments: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Run a QMP command that must succeed."""
        return self._guard(self.qmp.execute, command, arguments, **kw)

    def execute_error(self, command: str, arguments: Mapping[str, Any] | None = None,
                      **kw: Any) -> QmpError | None:
        """Run a QMP command; return its error, or None if it succeeded."""
        err: QmpError | None = self._guard(self.qmp.execute_error, command, arguments, **kw)
        return err

    def try_execute(self, command: str, arguments: Mapping[str, Any] | None = None, **kw: Any
                    ) -> Any | QmpError:
        return self._guard(self.qmp.try_execute, command, arguments, **kw)

    def wait_event(self, name: str, match: Any = None, timeout: float | None = None) -> dict[str, Any]:
        event: dict[str, Any] = self._guard(self.qmp.wait_event, name, match,
                                            self.timeouts.event if timeout is None else timeout)
        return event

    def _guard(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (ConnectionError, EOFError, OSError, QmpTimeout) as e:
            if not isinstance(e, QmpTimeout):
                # QMP hangs up a moment before the exit status can be collected
                self.proc.wait_exit(2.0)
            if not self.proc.alive():
                at = f"during QMP {args[0]!s}"
                watch = current_watch()  # dates the death, should the test swallow this error
                line = watch.line_for(self.proc, at) if watch else crash_line(self.build, self.proc, at)
                # the crash line first, so that a test that lets this through fails with it
                raise ProcessError(f"{line}\n  stderr: {self.proc.stderr_text(4000).strip()}") from None
            if isinstance(e, QmpTimeout):
                raise  # QEMU is alive and just did not answer: a timeout, as documented
            raise ProcessError(f"{self.name}: QMP failed during {args[0]!s}: {e}") from None

    # -- convenience --------------------------------------------------------------
    def nodes(self) -> dict[str, dict[str, Any]]:
        """``query-named-block-nodes`` keyed by node name."""
        return {n["node-name"]: n for n in self.execute("query-named-block-nodes")}

    def node_ro(self, node: str) -> bool:
        try:
            return bool(self.nodes()[node]["ro"])
        except KeyError:
            raise AssertionError(f"{self.name}: node {node!r} does not exist "
                                 f"(nodes: {sorted(self.nodes())})") from None

    def alive(self) -> bool:
        return self.proc.alive()

    def nodes_snapshot(self) -> tuple[str, Any]:
        """``query-named-block-nodes`` for the evidence of a failed test (taken late: bounded)."""
        if not self.alive():
            return f"{self.name}-nodes", "process gone"
        return f"{self.name}-nodes", self.qmp.try_execute("query-named-block-nodes",
                                                           timeout=self.timeouts.shutdown)

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> int:
        """``quit`` over QMP, wait, then kill. Returns the exit code.

        Raises :class:`ProcessError` if QEMU had died on its own before
        (crash or unexpected exit) and nobody reported it yet (``death_noted``):
        that must fail the test, not pass quietly.
        """
        if self._stopped:
            return self.proc.returncode or 0
        self._stopped = True
        died_before = not self.proc.alive() and not self.proc.stop_expected
        self.proc.stop_expected = True  # from here on, its exit is ours (quit)
        # Not to a QEMU already gone (killed on SIGTERM), nor over a session an interrupt
        # broke: nobody would answer, and waiting for an exit that no quit asked for took
        # the whole shutdown timeout (10 s of an interrupted run). Those get SIGTERM.
        quit_sent = self.proc.alive() and self.qmp.connected
        if quit_sent:
            try:
                self.qmp.execute("quit", timeout=self.timeouts.shutdown)
            except (QmpCommandError, QmpTimeout, ConnectionError, EOFError, OSError):
                pass
            except Exception:  # noqa: BLE001 - EOF surfaces as various errors
                pass
        self.qmp.close()
        try:
            code = self.proc.wait(self.timeouts.shutdown) if quit_sent else self.proc.stop(
                self.timeouts.shutdown)
        except ProcessError:
            code = self.proc.stop(self.timeouts.shutdown)
        if died_before and self.proc.death_noted:
            return code
        if died_before:
            raise ProcessError(crash_line(self.build, self.proc, "at shutdown")
                               + f"\n  stderr: {self.proc.stderr_text(4000).strip()}")
        if code < 0 and code != -9 and (quit_sent or code != -15):
            raise ProcessError(f"{self.name} did not quit cleanly: {describe_status(code)}\n"
                               f"  stderr: {self.proc.stderr_text(4000).strip()}")
        return code


def qemu_argv(kind: str, build: QemuBuild, accel: str, machine: str, fd: int,
              args: Sequence[str]) -> list[str]:
    """The command line of a QEMU whose QMP monitor is on inherited fd *fd*."""
    if kind == "qsd":
        return [str(build.path("qsd")), "--chardev", f"socket,id=qmp0,fd={fd}",
                "--monitor", "chardev=qmp0", *args]
    argv = [str(build.path("system")), "-M", machine, "-accel", accel]
    if accel != "qtest":
        argv.append("-S")  # no guest code runs; -S keeps the TCG vCPU parked
    argv += [*build.system_args, "-nodefaults", "-display", "none",
             "-chardev", f"socket,id=qmp0,fd={fd}", "-mon", "chardev=qmp0,mode=control", *args]
    return argv


def launch(
    kind: str,
    build: QemuBuild,
    args: Sequence[str],
    *,
    accel: str,
    registry: ProcessRegistry,
    evidence: TestEvidence,
    timeouts: Timeouts,
    machine: str = "none",
    wrapper: Wrapper = Wrapper(),
    name: str | None = None,
) -> QemuInstance:
    """Start QEMU and return once QMP capabilities are negotiated.

    Raises :class:`LaunchError` (exit status + stderr) if QEMU refuses to start.
    """
    name = name or ("qsd" if kind == "qsd" else "qemu")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    qemu = qemu_argv(kind, build, accel, machine, theirs.fileno(), args)
    argv = [*wrapper.prefix, *qemu]
    env = {**build.env_for(kind), **wrapper.env}
    try:
        proc = registry.spawn(argv, name=name, log_dir=evidence.log_dir, env=env,
                              pass_fds=[theirs.fileno()], program=os.path.basename(qemu[0]))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    evidence.add_process(proc)
    qmp = QmpSession(name, evidence.transcript(name), timeouts.qmp)
    try:
        qmp.connect(ours, timeout=timeouts.launch)
    except (ConnectionError, QmpTimeout) as e:
        qmp.close()
        try:
            code: int | None = proc.wait(timeouts.shutdown)
        except ProcessError:
            proc.stop()
            code = proc.returncode
        if code is not None and code >= 0:
            proc.death_noted = "refused to start (LaunchError)"  # the caller's outcome; a signal is a crash
        reason = "exited during start-up" if not isinstance(e, QmpTimeout) else "never greeted on QMP"
        raise LaunchError(f"{name} {reason}", argv, code, proc.stderr_text()) from None
    return QemuInstance(name, kind, build, proc, qmp, timeouts)
