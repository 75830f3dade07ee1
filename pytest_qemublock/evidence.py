"""Per-test evidence: command lines, process output, QMP transcripts.

Everything is written while the test runs into its work directory, so even a
hard crash leaves files behind. ``replay.jsonl`` keeps, in the order they
happened, the processes started, the tools run, every QMP message, what was
observed through ``/proc`` and the checks, for ``reproduce.py``. When the test fails (or with
``--qb-evidence=all``) the logs are copied to ``<evidence-dir>/<test>/`` and a
short excerpt goes into the pytest report; :meth:`TestEvidence.record` is the same
evidence as data, for the results file and the HTML report (``docs/report.md``).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .host.process import ManagedProcess

RETENTION = ("failed", "all", "none")


def safe_name(nodeid: str, limit: int = 120) -> str:
    """A file-system-safe, still readable directory name for a test id."""
    name = re.sub(r"[^A-Za-z0-9_.\-\[\]=]+", "_", nodeid.replace("::", "__")).strip("_")
    return name[:limit]


class Journal:
    """Everything a case did, in order, as JSON lines (``replay.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, kind: str, **data: Any) -> None:
        # Opened per entry: processes lent to another test write into its journal.
        # Never raises: an entry that cannot be written (the owner's work dir already
        # removed, e.g. a shared QEMU quitting at module end) must not change what the
        # test does; a QMP "quit" lost this way cost a 20 s stop per shared QEMU.
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, **data}, default=str) + "\n")
        except OSError:
            pass

    def extend(self, other: Journal) -> None:
        """Take in what *other* journaled so far (a shared target's making, lent to a test)."""
        try:
            lines = other.path.read_text(encoding="utf-8").splitlines(keepends=True)
        except OSError:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(line for line in lines if '"kind": "ended"' not in line)


class Transcript:
    """Every QMP message in both directions, as JSON lines with timestamps."""

    def __init__(self, path: Path, label: str, journal: Journal | None = None) -> None:
        self.path = path
        self.label = label
        self.journal = journal
        self._t0 = time.monotonic()
        self._file = open(path, "a", encoding="utf-8")

    def record(self, direction: str, message: object) -> None:
        entry = {
            "t": round(time.monotonic() - self._t0, 6),
            "peer": self.label,
            "dir": direction,
            "msg": message,
        }
        self._file.write(json.dumps(entry, default=str) + "\n")
        self._file.flush()
        if self.journal is not None:
            self.journal.add("qmp", peer=self.label, dir=direction, msg=message)

    def note(self, kind: str, **data: Any) -> None:
        """Journal something observed of this QMP peer's process (fd modes, locks)."""
        if self.journal is not None:
            self.journal.add(kind, peer=self.label, **data)

    def close(self) -> None:
        self._file.close()


class TestEvidence:
    """Collects what one test's processes did. One instance per test."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, workdir: Path, nodeid: str) -> None:
        self.nodeid = nodeid
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[ManagedProcess] = []
        self.transcripts: list[Path] = []
        self.context: dict[str, Any] = {}
        self.snapshots: list[Callable[[], tuple[str, Any]]] = []
        self.snapshot_files: list[Path] = []
        #: the outcome checks that did not go as expected (see :meth:`finding`)
        self.findings: list[dict[str, Any]] = []
        self.journal = Journal(self.log_dir / "replay.jsonl")
        #: for reproduce.py: the run's directories (-> script variables) and binaries
        self.replay_env: dict[str, Any] = {}

    def add_process(self, proc: ManagedProcess) -> None:
        if proc in self.processes:
            return
        self.processes.append(proc)
        with open(self.log_dir / "commands.txt", "a", encoding="utf-8") as f:
            f.write(f"# {proc.name} (pid {proc.pid})\n{proc.command_line()}\n\n")
        self.journal.add("spawn", name=proc.name, pid=proc.pid, argv=proc.argv, env=proc.env_delta,
                         sockets=proc.sockets)

    def transcript(self, label: str) -> Transcript:
        path = self.log_dir / f"qmp-{label}.jsonl"
        n = 1
        while path in self.transcripts:
            n += 1
            path = self.log_dir / f"qmp-{label}-{n}.jsonl"
        self.transcripts.append(path)
        peer = label if n == 1 else f"{label}-{n}"
        self.journal.add("peer", label=peer)  # the QMP peer of the process spawned last
        return Transcript(path, peer, self.journal)

    def note(self, **facts: Any) -> None:
        """Record facts (build, backend, options...) shown on failure and in JUnit."""
        self.context.update(facts)

    def add_snapshot(self, fn: Callable[[], tuple[str, Any]]) -> None:
        """Register a callable taken on failure, e.g. a ``query-named-block-nodes`` dump."""
        self.snapshots.append(fn)

    def finding(self, **fields: str) -> None:
        """Record one check that QEMU did not pass as expected (or passed as a known bug
        predicts): ``what``, ``expected``, ``because``, ``did``, ``problems``, ``bug``..."""
        self.findings.append(fields)

    # -- on failure ---------------------------------------------------------
    def take_snapshots(self) -> None:
        for fn in self.snapshots:
            try:
                name, data = fn()
            except Exception as e:  # noqa: BLE001 - the process may be gone
                name, data = "snapshot-error", repr(e)
            path = self.log_dir / f"{safe_name(name)}.json"
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, default=str)
            if path not in self.snapshot_files:
                self.snapshot_files.append(path)

    def excerpt(self, qmp_lines: int = 12, stderr_lines: int = 8) -> str:
        """A short text for the pytest report: context, commands, stderr and QMP tails."""
        out: list[str] = []
        if self.context:
            out.append("context: " + ", ".join(f"{k}={v}" for k, v in self.context.items()))
        for proc in self.processes:
            out.append(f"$ {proc.command_line()}")
            out.append(f"  -> {proc.describe()}")
            err = proc.stderr_text(4000).strip().splitlines()[-stderr_lines:]
            out.extend(f"  stderr| {line}" for line in err)
        for path in self.transcripts:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            out.append(f"QMP {path.name} (last {min(qmp_lines, len(lines))} of {len(lines)}):")
            for line in lines[-qmp_lines:]:
                try:
                    entry = json.loads(line)
                    text = json.dumps(entry["msg"], separators=(",", ":"))
                    out.append(f"  {entry['t']:9.4f} {entry['dir']} {text[:300]}")
                except (ValueError, KeyError):
                    out.append("  " + line[:300])
        return "\n".join(out)

    def record(self, kept: Path | None = None, *, stderr_lines: int = 20, qmp_lines: int = 40,
               limit: int = 8000) -> dict[str, Any]:
        """The evidence as JSON-able data (bounded: tails only) for a failed or xfailed case."""
        procs = []
        for proc in self.processes:
            err = proc.stderr_text(limit).rstrip().splitlines()[-stderr_lines:]
            procs.append({"name": proc.name, "command": proc.command_line(),
                          "status": proc.describe(), "stderr": "\n".join(err)})
        qmp = []
        for path in self.transcripts:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            qmp.append({"name": path.name, "lines": len(lines),
                        "tail": [_qmp_line(line) for line in lines[-qmp_lines:]]})
        snapshots = []
        for path in self.snapshot_files:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                continue
            snapshots.append({"name": path.stem, "text": text if len(text) <= limit
                              else text[:limit] + f"\n... ({len(text)} characters in {path.name})"})
        out: dict[str, Any] = {"context": {k: v if isinstance(v, str) else json.dumps(v, default=str)
                                           for k, v in self.context.items()},
                               "findings": self.findings, "processes": procs, "qmp": qmp,
                               "snapshots": snapshots}
        if kept is not None:
            out["kept"] = str(kept)
        return out

    def keep(self, dest: Path) -> Path:
        """Copy the logs to *dest* (replacing an older copy)."""
        for proc in self.processes:  # how each one ended, for the replay's verdict
            self.journal.add("ended", name=proc.name, pid=proc.pid, status=proc.returncode,
                             stderr=proc.stderr_text(4000))
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.log_dir, dest, dirs_exist_ok=True)
        # Processes shared with other tests (pool.py) log elsewhere: copy them too.
        for proc in self.processes:
            for path in (proc.stdout_path, proc.stderr_path):
                if path.parent != self.log_dir and path.exists():
                    shutil.copyfile(path, dest / path.name)
        return dest


def _qmp_line(line: str, limit: int = 600) -> str:
    """One transcript entry as ``t dir message``."""
    try:
        entry = json.loads(line)
        text = json.dumps(entry["msg"], separators=(",", ":"))
        line = f"{entry['t']:9.4f} {entry['dir']} {text}"
    except (ValueError, KeyError, TypeError):
        pass
    return line if len(line) <= limit else line[:limit] + "..."
