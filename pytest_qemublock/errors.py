"""Exception hierarchy of pytest-qemublock.

Everything the plugin raises on purpose derives from :class:`QemuBlockError`,
so a suite can tell "QEMU did something unexpected" from a bug in a test.
"""
from __future__ import annotations


class QemuBlockError(Exception):
    """Base class of all errors raised by pytest-qemublock."""


class BuildError(QemuBlockError):
    """The QEMU build under test is unusable (missing or non-QEMU binary, too old...).

    Raised during configuration; the plugin turns it into a ``pytest.UsageError``
    so the user sees one line, not a traceback.
    """


class ProcessError(QemuBlockError):
    """A process failed to start, died early, or did not stop in time."""


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
        from .process import format_argv, describe_status

        lines = [self.args[0], f"  command: {format_argv(self.argv)}"]
        if self.exitcode is not None:
            lines.append(f"  status: {describe_status(self.exitcode)}")
        if self.stderr.strip():
            lines.append("  stderr: " + self.stderr.strip().replace("\n", "\n          "))
        return "\n".join(lines)


class QmpTimeout(QemuBlockError):
    """A QMP command or event did not arrive within its timeout."""


class QmpCommandError(QemuBlockError):
    """A QMP command returned an error where the test expected success."""

    def __init__(self, command: str, arguments: dict | None, error_class: str, desc: str) -> None:
        self.command = command
        self.arguments = arguments
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {command} {arguments or {}} failed: [{error_class}] {desc}")


class ServerError(QemuBlockError):
    """A protocol server (qemu-nbd, nbdkit, nginx, ...) failed to become ready."""


class StorageUnavailable(QemuBlockError):
    """A storage provider cannot work on this host; the message says what to install."""
