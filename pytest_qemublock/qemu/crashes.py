"""Deaths of the build's processes: never silent, reported once, as one first line.

Every qemu-system, qemu-storage-daemon, qemu-nbd, qemu-img and qemu-io of
the build under test that dies on its own while a case uses it fails that
case with one line: which program of which build, how it died (signal, the
assertion text of an abort, exit status), when (the step that found it, and
how long after its start) and the tail of its stderr. The test's
:class:`CrashWatch` looks at the processes in its evidence (its own, and the
shared ones lent to it); the outcome checks ask it first, and the plugin asks
it again after the test body, so a crash that a test swallowed still fails
it. A death that *is* the expected outcome (a known abort) is excused by the
check that predicted it. A shared process found dead by a later case fails
that case the same way (:func:`fail_if_crashed`, from the pool).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pytest

from ..evidence import TestEvidence
from ..host.process import ManagedProcess, describe_status
from .build import QemuBuild

#: the roles of a build whose processes the watch guards
ROLES = ("system", "qsd", "nbd", "img", "io")
#: assert(3)'s message as glibc prints it, and QEMU's g_assert / abort reports
_ABORT = re.compile(r"(Assertion .* failed\.?|assertion failed.*|\*\*\s*ERROR:.*)")


def program(build: QemuBuild, argv: Iterable[str]) -> str | None:
    """The file name of *build*'s binary that *argv* runs (behind any wrapper), if any."""
    paths = {str(build.path(r)): build.path(r).name for r in ROLES if build.has(r)}
    return next((paths[a] for a in argv if a in paths), None)


def how(returncode: int | None, stderr: str) -> str:
    """``killed by SIGABRT (Assertion `x' failed)``, ``exit status 1``."""
    text = describe_status(returncode)
    abort = _ABORT.search(stderr)
    return f"{text} ({abort.group(1).strip()})" if abort and returncode == -6 else text


def stderr_tail(stderr: str, lines: int = 3, limit: int = 400) -> str:
    """The last lines of *stderr* on one line."""
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-lines:] if line.strip())
    return repr(tail[-limit:]) if tail else "(empty)"


def crash_line(build: QemuBuild, proc: ManagedProcess, at: str, *, found: float | None = None) -> str:
    """The one line that reports *proc*'s death, found *at* a step."""
    prog = program(build, proc.argv) or proc.name
    after = (found if found is not None else time.monotonic()) - proc.started
    stderr = proc.stderr_text(8000)
    return (f"CRASH: {prog} of build {build.name} {how(proc.popen.returncode, stderr)} "
            f"[{proc.name}, pid {proc.pid}], found {at}, {after:.2f}s after its start; "
            f"stderr: {stderr_tail(stderr)}")


def tool_crash_line(build: QemuBuild, argv: list[str], returncode: int, stderr: str, at: str) -> str:
    """The line for a qemu-img / qemu-io run killed by a signal."""
    prog = program(build, argv) or argv[0]
    return (f"CRASH: {prog} of build {build.name} {how(returncode, stderr)}, found {at}; "
            f"stderr: {stderr_tail(stderr)}")


def dead_unnoted(build: QemuBuild, procs: Iterable[ManagedProcess]) -> list[ManagedProcess]:
    """The build's processes among *procs* that died on their own and nobody accounted for."""
    out = []
    for proc in procs:
        if proc.death_noted or program(build, proc.argv) is None:
            continue
        if proc.popen.returncode is None and proc.alive():
            continue
        if proc.died_unasked:
            out.append(proc)
    return out


def fail_if_crashed(build: QemuBuild, procs: Iterable[ManagedProcess], at: str, why: str) -> None:
    """Fail the running case for each of the build's *procs* that died unreported (then
    they count as reported: the caller replaces them)."""
    dead = dead_unnoted(build, procs)
    if not dead:
        return
    lines = [crash_line(build, p, at) for p in dead]
    for p in dead:
        p.death_noted = why
    pytest.fail("\n".join(lines), pytrace=False)


class CrashWatch:
    """The deaths of the build's processes in one test's evidence."""

    def __init__(self, build: QemuBuild, evidence: TestEvidence) -> None:
        self.build = build
        self.evidence = evidence
        self._found: dict[int, tuple[ManagedProcess, str]] = {}
        self._tools: list[str] = []

    def poll(self, at: str) -> list[str]:
        """The crash lines of every unreported death so far; a death is dated by the
        first poll that saw it."""
        now = time.monotonic()
        for proc in dead_unnoted(self.build, self.evidence.processes):
            if id(proc) not in self._found:
                self._found[id(proc)] = (proc, crash_line(self.build, proc, at, found=now))
        return [line for proc, line in self._found.values() if not proc.death_noted] + self._tools

    def line_for(self, proc: ManagedProcess, at: str) -> str:
        """The crash line of *proc* as first found (found *at* now, if not before)."""
        self.poll(at)
        found = self._found.get(id(proc))
        return found[1] if found is not None else crash_line(self.build, proc, at)

    def fail_now(self, at: str) -> None:
        """Fail the case if a process of the build died (reported once: then noted)."""
        lines = self.poll(at)
        if lines:
            self._settle(f"reported by {self.evidence.nodeid}")
            pytest.fail("\n".join(lines), pytrace=False)

    def tool_crashed(self, line: str) -> None:
        self._tools.append(line)

    def excuse(self, returncode: int, text: str, why: str) -> list[ManagedProcess]:
        """Account for the deaths by *returncode* with *text* on stderr (the expected
        outcome of a step, e.g. a known abort)."""
        excused = [p for p in dead_unnoted(self.build, self.evidence.processes)
                   if p.popen.returncode == returncode and text in p.stderr_text(8000)]
        for p in excused:
            p.death_noted = why
        return excused

    def after_call(self, error: BaseException | None) -> None:
        """After the test body: fail with the crash lines first (then what the body raised),
        or let *error* through."""
        lines = self.poll("after the test body")
        if not lines:
            return
        self._settle(f"reported by {self.evidence.nodeid}")
        if error is not None:
            first = str(error).strip().splitlines()[:1]
            if first and first[0] not in lines:
                lines.append(f"the case meanwhile ended with {type(error).__name__}: {first[0]}")
        pytest.fail("\n".join(lines), pytrace=False)

    def _settle(self, why: str) -> None:
        for proc, _ in self._found.values():
            proc.death_noted = proc.death_noted or why
        self._tools.clear()


_current: list[CrashWatch] = []


def current() -> CrashWatch | None:
    """The watch of the running test (None outside the plugin's fixtures)."""
    return _current[-1] if _current else None


@contextmanager
def watching(watch: CrashWatch) -> Iterator[CrashWatch]:
    """Make *watch* the running test's for the outcome checks."""
    _current.append(watch)
    try:
        yield watch
    finally:
        _current.remove(watch)


def fail_now(at: str) -> None:
    """:meth:`CrashWatch.fail_now` of the running test, if any."""
    watch = current()
    if watch is not None:
        watch.fail_now(at)


WATCH_KEY = pytest.StashKey[CrashWatch]()
