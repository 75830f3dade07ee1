"""The build's command-line tools (qemu-img, qemu-io) and how a qemu-io command went.

Every place that runs ``qemu-io`` (the tool, or HMP's ``qemu-io`` inside a
running QEMU) judges its output with :class:`QemuIoResult`: one rule for "the
command ran and every byte matched".
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..host.process import format_argv, run
from . import crashes
from .context import RunContext

#: qemu-io-cmds.c print_report(): the line a completed read/write prints
IO_DONE = re.compile(r"^(read|wrote) \d+/\d+ bytes at offset \d+", re.MULTILINE)
#: qemu-io-cmds.c: "<command> failed: <strerror>" (e.g. "write failed: Operation not permitted")
IO_FAILED = re.compile(r"^\w+ failed: ", re.MULTILINE)
#: qemu-io-cmds.c qemu_io_compare(): a ``-P`` byte that differs
PATTERN_FAILED = "Pattern verification failed"


@dataclass(frozen=True)
class QemuIoResult:
    """One qemu-io command and what came back.

    *reply* is what failed before the command ran: HMP's reply (qemu-io's
    error_report goes there) or, for the tool, a non-zero exit status;
    *output* is what qemu-io printed (results, mismatches).
    """

    command: str  # e.g. "read -P 0x5a 0 64k"
    reply: str
    output: str
    how: str = ""  # the command line or HMP command, for messages

    @classmethod
    def from_tool(cls, command: str, argv: list[str], res: subprocess.CompletedProcess[str]
                  ) -> QemuIoResult:
        """A ``qemu-io ... -c COMMAND`` run."""
        text = (res.stdout + res.stderr).strip()
        reply = "" if res.returncode == 0 else f"exit status {res.returncode}"
        return cls(command, reply, text, format_argv(argv))

    @property
    def failed(self) -> bool:
        """The command did not run or reported an error (e.g. its permissions were refused)."""
        return bool(self.reply.strip()) or bool(IO_FAILED.search(self.output))

    @property
    def done(self) -> bool:
        """The command ran to its result line."""
        return not self.failed and IO_DONE.search(self.output) is not None

    @property
    def pattern_ok(self) -> bool:
        """A ``read -P`` ran and every byte matched."""
        return self.done and PATTERN_FAILED not in self.output

    def describe(self) -> str:
        parts = [self.how] if self.how else []
        if self.reply.strip():
            parts.append(f"reply: {self.reply.strip()!r}")
        parts.append(f"output: {self.output.strip()!r}" if self.output.strip() else "no output")
        return "; ".join(parts)


class Tools:
    """qemu-img / qemu-io of one build, logged into the test's evidence."""

    def __init__(self, ctx: RunContext, template_dir: Path | None = None) -> None:
        self.ctx = ctx
        self.build = ctx.build
        self.evidence = ctx.evidence
        self.timeouts = ctx.timeouts
        #: where recipe images made by this build are kept for copying (per session)
        self.template_dir = template_dir
        #: journaled for the replay (not a session template's build: its copies are)
        self.replayed = True

    def run(self, role: str, *args: str | Path, check: bool = True,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [*prefix, str(self.build.path(role)), *map(str, args)]
        res = run(argv, timeout=self.timeouts.tool, env=self.build.env_for(role),
                  program=self.build.path(role).name)
        with open(self.evidence.log_dir / "tools.log", "a", encoding="utf-8") as f:
            f.write(f"$ {format_argv(argv)}\n-> exit {res.returncode}\n{res.stdout}{res.stderr}\n")
        if self.replayed:
            self.evidence.journal.add("tool", argv=argv, rc=res.returncode, stderr=res.stderr[-2000:])
        if res.returncode < 0:  # killed by a signal: a crash, whatever the caller expected
            line = crashes.tool_crash_line(self.build, argv, res.returncode, res.stderr,
                                           f"running {role} {' '.join(map(str, args))[:200]}")
            watch = crashes.current()
            if watch is not None:
                watch.tool_crashed(line)  # still fails the case if the caller swallows this
            pytest.fail(line, pytrace=False)
        if check and res.returncode != 0:
            raise AssertionError(
                f"{format_argv(argv)} failed (exit {res.returncode}) with build "
                f"{self.build.name}:\n{res.stderr.strip() or res.stdout.strip()}")
        return res

    def img(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("img", *args, check=check)

    def io(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("io", *args, check=check)

    def io_command(self, command: str, *args: str | Path) -> QemuIoResult:
        """``qemu-io ARGS -c COMMAND`` (the image last in *args*), judged."""
        *opts, image = args
        argv = [*map(str, opts), "-c", command, str(image)]
        res = self.run("io", *argv, check=False)
        return QemuIoResult.from_tool(command, ["qemu-io", *argv], res)

    def info(self, path: Path) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.img("info", "--output=json", "-U", path).stdout)
        return info
