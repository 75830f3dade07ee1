"""Starting a program the way every process of the run is started, and running
short-lived ones (qemu-img, qemu-io, mount, tgtadm ...) to completion.

Every child gets a process group of its own, goes into the run's sandbox if
there is one (``sandbox.ours()``; else it gets a death signal: ``setpriv --pdeathsig``)
and is counted for the report (``started.STARTED``). Long-running processes are
the :class:`~.process.ProcessRegistry`'s.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence

from ..errors import QemuBlockError
from . import sandbox
from .started import STARTED, program_of


class ProcessError(QemuBlockError):
    """A process failed to start, died early, or did not stop in time."""




def format_argv(argv: Sequence[str]) -> str:
    """Render a command line so it can be pasted into a shell."""
    return shlex.join(str(a) for a in argv)


def describe_status(returncode: int | None) -> str:
    """Human-readable exit status: ``exit status 1`` or ``killed by SIGSEGV``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@functools.lru_cache(maxsize=1)
def _setpriv() -> str:
    # PATH may be narrowed to pick the QEMU under test: util-linux's own place counts too
    found = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    if found is None:
        raise ProcessError("setpriv is not installed (Debian package util-linux): every process "
                           "is started with its death signal set by it")
    return found


def popen_args(argv: list[str], enclosed: bool) -> tuple[list[str], dict[str, object]]:
    """The argv and Popen keywords that start *argv* in a process group of its own,
    so that it never outlives a SIGKILLed pytest.

    *enclosed* (it starts in the run's sandbox, :func:`.sandbox.ours`): the kernel
    kills it with the sandbox, as is. Otherwise it needs a death signal: a
    ``preexec_fn`` would force ``fork()`` of the whole pytest process (~5 ms for a
    worker of 80 MB, paid on every QEMU start); without one, CPython uses
    ``vfork()`` (~0.1 ms) and util-linux's ``setpriv --pdeathsig`` sets the death
    signal in the child, at the cost of one more exec (0.8-1.2 ms per start, measured).
    """
    if enclosed:
        return argv, {"process_group": 0}
    return [_setpriv(), "--pdeathsig", "SIGKILL", "--", *argv], {"process_group": 0}


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    input: bytes | None = None,
    program: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived tool (qemu-img, qemu-io, mount...) with a hard timeout.

    The child gets the same death signal as long-running ones; on timeout its
    whole process group is killed. *program*: as for :meth:`ProcessRegistry.spawn`.
    """
    args = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **(env or {})}
    try:
        with sandbox.ours() as enclosed:
            run_argv, how = popen_args(args, enclosed)
            proc = subprocess.Popen(  # type: ignore[call-overload]
                run_argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, **how)
    except OSError as e:
        raise ProcessError(f"cannot run {format_argv(args)}: {e.strerror}") from None
    STARTED.note(program_of(args, program))
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise ProcessError(f"timed out after {timeout:.1f}s: {format_argv(args)}") from None
    result = subprocess.CompletedProcess(
        args, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    )
    if check and result.returncode != 0:
        raise ProcessError(
            f"{format_argv(args)} failed ({describe_status(result.returncode)}):\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result
