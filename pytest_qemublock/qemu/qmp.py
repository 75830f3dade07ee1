"""A small synchronous facade over ``qemu.qmp``'s async :class:`QMPClient`.

This is the only module that imports ``qemu.qmp`` (its API is still alpha and
changes between micro releases). It adds what tests need and ``QMPClient``
does not have: a timeout on every wait, error results as data, event waits
with a filter, and a transcript of every message in both directions.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, StateError
from qemu.qmp.protocol import Runstate

from ..errors import QemuBlockError
from ..evidence import Transcript
from ..host.listeners import socket_address


class QmpTimeout(QemuBlockError):
    """A QMP command or event did not arrive within its timeout."""


class QmpCommandError(QemuBlockError):
    """A QMP command returned an error where the test expected success."""

    def __init__(self, command: str, arguments: Mapping[str, Any] | None, error_class: str,
                 desc: str) -> None:
        self.command = command
        self.arguments = arguments
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command} {arguments or {}} failed: [{error_class}] {desc}")


Event = Mapping[str, Any]


@dataclass(frozen=True)
class QmpError:
    """A QMP error response, returned by :meth:`QmpSession.execute_error`."""

    error_class: str
    desc: str

    def __str__(self) -> str:
        return f"[{self.error_class}] {self.desc}"


class QmpSession:
    """One QMP connection, driven synchronously from test code.

    All waits take a timeout in seconds (already scaled by the caller's
    timeout factor); none of them can hang.
    """

    def __init__(self, name: str, transcript: Transcript, default_timeout: float) -> None:
        self.name = name
        self.transcript = transcript
        self.default_timeout = default_timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._seen_events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] | None = None
        #: an interrupt cancelled the reader mid-await: nothing would read a reply any more
        self._interrupted = False

    # -- connection ----------------------------------------------------------
    def connect(self, sock: socket.socket, timeout: float | None = None) -> None:
        """Connect over an already-connected socket and negotiate capabilities.

        Raises ``ConnectionError`` when QEMU hangs up first (it exited) and
        :class:`QmpTimeout` when it never greets.
        """
        try:
            self._run(self._client.connect(sock), timeout, "QMP greeting")
        except ConnectError as e:
            raise ConnectionError(f"QMP connection failed: {e}") from None
        greeting = self._client.greeting
        self.greeting = _plain(greeting._raw) if greeting is not None else None
        self.transcript.record("<", self.greeting)

    def retarget(self, transcript: Transcript) -> None:
        """Record from now on into *transcript* (a QEMU lent to another test)."""
        old, self.transcript = self.transcript, transcript
        old.close()

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING and not self._interrupted

    def close(self) -> None:
        """Disconnect (errors ignored: the peer may already be gone)."""
        try:
            if self._client.runstate != Runstate.IDLE:
                self._run(self._client.disconnect(), 5.0, "QMP disconnect")
        except Exception:  # noqa: BLE001 - peer gone, EOF, protocol error
            pass
        finally:
            self._drain_events()
            self._cancel_pending()
            self._loop.close()
            self.transcript.close()

    # -- commands --------------------------------------------------------------
    def execute(self, command: str, arguments: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run *command*; return its ``return`` value or raise :class:`QmpCommandError`."""
        result = self._execute(command, arguments, timeout)
        if isinstance(result, QmpError):
            raise QmpCommandError(command, dict(arguments or {}), result.error_class, result.desc)
        return result

    def execute_error(self, command: str, arguments: Mapping[str, Any] | None = None,
                      timeout: float | None = None) -> QmpError | None:
        """Run *command*; return its error (class and text), or ``None`` on success."""
        result = self._execute(command, arguments, timeout)
        return result if isinstance(result, QmpError) else None

    def try_execute(self, command: str, arguments: Mapping[str, Any] | None = None,
                    timeout: float | None = None) -> Any | QmpError:
        """Run *command*; return either its ``return`` value or a :class:`QmpError`."""
        return self._execute(command, arguments, timeout)

    def _execute(self, command: str, arguments: Mapping[str, Any] | None,
                 timeout: float | None) -> Any | QmpError:
        args = dict(arguments) if arguments else None
        request: dict[str, Any] = {"execute": command}
        if args:
            request["arguments"] = args
        self.transcript.record(">", request)
        try:
            ret = self._run(self._client.execute(command, args), timeout, f"QMP {command}")
        except ExecuteError as e:
            err = QmpError(e.error_class, e.error.error.desc)
            self.transcript.record("<", {"error": {"class": err.error_class, "desc": err.desc}})
            self._drain_events()
            return err
        except (ExecInterruptedError, StateError) as e:
            # QEMU hung up (it died): a plain ConnectionError, not qemu.qmp's own
            # class, so that QemuInstance can report the exit status instead.
            self.transcript.record("!", {"disconnected": command, "error": str(e)})
            raise ConnectionError(f"{self.name}: QMP connection lost during {command}: {e}") from None
        self.transcript.record("<", {"return": ret})
        self._drain_events()
        return ret

    def pass_fd(self, fd: int, fdname: str, timeout: float | None = None) -> None:
        """Hand *fd* to QEMU (SCM_RIGHTS) and name it *fdname* with ``getfd``."""
        self._client.send_fd_scm(fd)
        # the socket it is, so that a replay can bind its own (reproduce.py)
        self.transcript.record(">", {"scm_rights": fdname, "socket": socket_address(fd)})
        self.execute("getfd", {"fdname": fdname}, timeout)

    # -- events ------------------------------------------------------------------
    def wait_event(self, name: str, match: Callable[[dict[str, Any]], bool] | Mapping[str, Any] | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """Return the first event called *name* whose data matches.

        *match* is either a predicate on the event or a dict that must be a
        subset of the event's ``data``. Events that arrived before the call
        count too, and each is consumed by the first wait it satisfies.
        """
        pred = _matcher(name, match)
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        while True:
            self._drain_events()
            for i, ev in enumerate(self._seen_events):
                if pred(ev):
                    return self._seen_events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = ", ".join(e["event"] for e in self._seen_events) or "none"
                raise QmpTimeout(
                    f"{self.name}: event {name} {match or ''} did not arrive within "
                    f"{timeout if timeout is not None else self.default_timeout:.1f}s "
                    f"(unconsumed events: {seen})"
                )
            try:
                message: Any = self._until(asyncio.wait_for(self._client.events.get(), remaining))
            except TimeoutError:
                continue
            except Exception as e:  # noqa: BLE001 - connection lost while waiting
                raise ConnectionError(
                    f"{self.name}: QMP connection lost while waiting for {name}: {e}") from None
            self._note_event(message)

    def events(self) -> list[dict[str, Any]]:
        """All events received so far and not consumed by :meth:`wait_event`."""
        self._drain_events()
        return list(self._seen_events)

    def _drain_events(self) -> None:
        try:
            for ev in self._client.events.clear():
                self._note_event(ev)
        except Exception:  # noqa: BLE001
            pass

    def _note_event(self, ev: Any) -> None:
        data = _plain(ev)
        self.transcript.record("<", data)
        self._seen_events.append(data)

    # -- plumbing --------------------------------------------------------------------
    def _run(self, coro: Any, timeout: float | None, what: str) -> Any:
        limit = self.default_timeout if timeout is None else timeout
        try:
            return self._until(asyncio.wait_for(coro, limit))
        except TimeoutError:
            self.transcript.record("!", {"timeout": what, "seconds": limit})
            raise QmpTimeout(f"{self.name}: {what} got no answer within {limit:.1f}s") from None

    def _until(self, aw: Awaitable[Any]) -> Any:
        try:
            return self._loop.run_until_complete(aw)
        except BaseException as e:
            if not isinstance(e, Exception):
                # KeyboardInterrupt (Ctrl-C, or SIGTERM through host/process.py)
                # stopped the loop mid-await: qemu.qmp's tasks would stay pending
                # and be destroyed at exit, printing "no running event loop"
                # tracebacks and "Task was destroyed" after pytest's summary.
                # A ``quit`` at teardown would then wait out its whole timeout.
                self._interrupted = True
                self._cancel_pending()
            raise

    def _cancel_pending(self) -> None:
        """Cancel this loop's tasks and let them unwind, while the loop can still run.

        Unwinding may schedule more (qemu.qmp's disconnect task), hence the rounds;
        the peer is gone or going, so each round is short, and bounded anyway.
        """
        for _ in range(3):
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            if not tasks or self._loop.is_closed():
                return
            for t in tasks:
                t.cancel()
            self._loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))


def _plain(obj: Any) -> Any:
    """Turn qemu.qmp's Message objects into plain JSON-like data."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _matcher(name: str, match: Callable[[dict[str, Any]], bool] | Mapping[str, Any] | None
             ) -> Callable[[dict[str, Any]], bool]:
    if match is None:
        return lambda ev: ev.get("event") == name
    if callable(match):
        fn = match
        return lambda ev: ev.get("event") == name and bool(fn(ev))
    wanted = dict(match)
    return lambda ev: ev.get("event") == name and _subset(wanted, ev.get("data", {}))


def _subset(wanted: Mapping[str, Any], data: Mapping[str, Any]) -> bool:
    for key, value in wanted.items():
        if key not in data:
            return False
        if isinstance(value, Mapping) and isinstance(data[key], Mapping):
            if not _subset(value, data[key]):
                return False
        elif data[key] != value:
            return False
    return True
