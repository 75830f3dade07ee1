"""The state journal: which processes a run has alive, for the next run to reap.

A run that dies by SIGKILL cannot clean up after itself; the next run reads
the journals of dead runs and kills what they recorded. Because that means
signalling pids read from a file, the journal must not become a way for
another local user to make a run kill or overwrite something:

* the state directory is private: created 0700, and refused (one line, with
  what is wrong) unless it is a real directory, not a symlink, owned by us and
  neither group- nor world-accessible; every file in it is opened relative to
  that checked directory with ``O_NOFOLLOW``, and read only if it is a regular
  file of ours;
* a recorded pid is signalled only when it is provably the same process (its
  start time in clock ticks matches the recorded one, so a reused pid is never
  hit) *and* provably ours: every process of a run carries the run's random
  token in its environment (``QEMUBLOCK_RUN``), and ``/proc/PID/environ`` must
  show the token that the journal's owner line recorded;
* a corrupt entry is skipped with a warning naming the file; a torn last line
  (the owner was killed mid-write) is expected and skipped silently.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import QemuBlockError
from . import procfs

#: the environment variable that marks every process of a run
RUN_ENV = "QEMUBLOCK_RUN"
SUFFIX = ".procs.jsonl"


class StateDirError(QemuBlockError):
    """The state directory is not private to this user: refused, never trusted."""


def default_state_dir() -> Path:
    """``$TMPDIR/qemublock-<uid>-procs`` (one per user, shared by that user's runs).

    The uid is the one outside a user namespace: under ``unshare -r`` a user is uid
    0, and ``qemublock-0-procs`` would be root's directory (refused: not ours).
    """
    return Path(tempfile.gettempdir()) / f"qemublock-{procfs.outer_uid(os.getuid())}-procs"


def new_token() -> str:
    """A run token: random, so that nobody can predict which processes are a run's."""
    return uuid.uuid4().hex


class StateDir:
    """The checked, private state directory, held open (all access goes through its fd)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateDirError(f"cannot create the state directory {path}: {e.strerror}") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            what = "is a symlink" if path.is_symlink() else e.strerror
            raise StateDirError(f"state directory {path} {what}: refused (remove it, or set "
                                f"TMPDIR to a directory of your own)") from None
        st = os.fstat(fd)
        problem = None
        if st.st_uid != os.geteuid():
            problem = f"is owned by uid {st.st_uid}, not {os.geteuid()}"
        elif stat.S_IMODE(st.st_mode) & 0o077:
            problem = f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
        if problem is not None:
            os.close(fd)
            raise StateDirError(f"state directory {path} {problem}: refused (another user could "
                                f"plant or read journals there; remove it, or set TMPDIR)")
        self.fd = fd

    def open_journal(self, name: str) -> int:
        """A new journal file of ours, never through a symlink."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600, dir_fd=self.fd)

    def journals(self) -> list[str]:
        return sorted(n for n in os.listdir(self.fd) if n.endswith(SUFFIX))

    def read(self, name: str) -> str | None:
        """The text of journal *name*; None unless it is a regular file of ours."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=self.fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return None
            return f.read(1 << 20).decode("utf-8", "replace")

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Live(Protocol):
    name: str
    start_ticks: str | None


class StateJournal:
    """The registry's live processes, on disk for the next run's :func:`reap_stale`.

    An append-only JSON-lines journal (``{"owner": pid, "token": ...}``, then
    ``{"+": pid, "start": ticks, "name": ...}`` and ``{"-": pid}``): one small
    ``write()`` per change. Rewriting a JSON file and renaming it over the old
    one cost ~0.8 ms per change on ext4, mostly in rename() (rename-over-existing
    forces the new data out, ``auto_da_alloc``): ~3 s of a serial run. The
    journal is truncated whenever nothing is live.
    """

    COMPACT_AFTER = 256  # lines

    def __init__(self, state: StateDir, token: str) -> None:
        self.name = f"{os.getpid()}{SUFFIX}"
        self.path = state.path / self.name
        self.token = token
        self._fd = state.open_journal(self.name)
        self._recorded: set[int] = set()
        self._lines = 0
        self._append({"owner": os.getpid(), "token": token})

    def _append(self, entry: dict[str, object]) -> None:
        os.write(self._fd, (json.dumps(entry) + "\n").encode())
        self._lines += 1

    def sync(self, live: Mapping[int, _Live]) -> None:
        """Record what changed since the last call; *live* maps pid -> process."""
        if not live and self._lines > self.COMPACT_AFTER:
            os.ftruncate(self._fd, 0)
            self._recorded.clear()
            self._lines = 0
            self._append({"owner": os.getpid(), "token": self.token})
            return
        for pid in self._recorded - live.keys():
            self._append({"-": pid})
        for pid in live.keys() - self._recorded:
            self._append({"+": pid, "start": live[pid].start_ticks, "name": live[pid].name})
        self._recorded = set(live)


@dataclass
class JournalState:
    """What one journal says: its owner and token, the processes still live, and
    how many lines could not be read."""

    owner: int | None = None
    token: str | None = None
    live: dict[int, tuple[str, str]] = field(default_factory=dict)  # pid -> (start ticks, name)
    corrupt: int = 0


def parse_journal(text: str) -> JournalState:
    """The state a journal's text records. A torn last line is not counted as corrupt."""
    state = JournalState()
    lines = text.split("\n")
    torn = lines.pop() if lines else ""  # after the last "\n": empty unless torn
    for line in lines:
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError(line)
            if "owner" in entry:
                state.owner = _pid(entry["owner"])
                token = entry.get("token")
                state.token = token if isinstance(token, str) and token else None
            elif "+" in entry:
                start, name = entry.get("start"), entry.get("name")
                pid = _pid(entry["+"])
                if start is None:
                    continue  # gone before its start time could be read: nothing to verify
                if not isinstance(start, str) or not start.isdigit():
                    raise ValueError(line)
                state.live[pid] = (start, str(name))
            elif "-" in entry:
                state.live.pop(_pid(entry["-"]), None)
            else:
                raise ValueError(line)
        except (ValueError, TypeError):
            state.corrupt += 1
    del torn
    return state


def _pid(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 1:
        raise ValueError(f"not a pid: {value!r}")
    return value


def carries_token(pid: int, token: str) -> bool:
    """Process *pid*'s environment holds ``QEMUBLOCK_RUN=<token>``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return f"{RUN_ENV}={token}".encode() in env


@dataclass
class Reaped:
    """What :func:`reap_stale` did: processes killed, and warnings for the header."""

    killed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def reap_stale(state: StateDir) -> Reaped:
    """Kill the processes that dead runs recorded, where provably the same and ours."""
    out = Reaped()
    for name in state.journals():
        text = state.read(name)
        if text is None:
            out.warnings.append(f"skipped {state.path / name}: not a regular file of ours")
            continue
        journal = parse_journal(text)
        if journal.corrupt:
            out.warnings.append(f"skipped {journal.corrupt} corrupt line(s) in {state.path / name}")
        if journal.owner is not None and journal.owner != os.getpid() and procfs.running(journal.owner):
            continue  # that run is still going (another session of this user)
        for pid, (start, label) in journal.live.items():
            st = procfs.stat(pid)
            if journal.token is None or st is None or st.start_ticks != start:
                continue  # gone, or a reused pid
            if not st.running:
                # Dead (its death signal did its job) but not yet reaped by init: a
                # zombie shows no environment, so kill only group members that
                # provably belong to the run (a wrapper's children).
                for member in procfs.group_pids(pid):
                    if carries_token(member, journal.token):
                        with contextlib.suppress(OSError):
                            os.kill(member, signal.SIGKILL)
                continue
            if not carries_token(pid, journal.token):
                continue  # not a process of that run
            group = st is not None and st.pgid == pid  # still leads its own group
            with contextlib.suppress(OSError):
                if group:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            out.killed.append(f"{label} (pid {pid})")
        state.remove(name)
    return out
