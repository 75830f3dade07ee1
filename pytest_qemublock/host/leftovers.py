"""Work and socket directories of dead runs: marked with their owner, removed by the next run.

A run's directories (``qb-*`` work dirs on /dev/shm or ``$TMPDIR``, ``qbs-*``
socket dirs, ``qbd-*`` export-socket dirs) hold images of up to a GiB and
sockets; a SIGKILLed run never removes them. Each gets an owner file
(:func:`claim`: pid and /proc start time, so a reused pid is not taken for
the owner); :func:`sweep` removes those whose owner is gone. A directory
without an owner file (made by an older plugin, or by a run between its
``mkdtemp`` and its :func:`claim`) is only removed once untouched for
:data:`UNMARKED_AFTER` seconds: a live run touches its work dir with every test.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

OWNER_FILE = ".qb-owner"
PREFIXES = ("qb-", "qbs-", "qbd-")
UNMARKED_AFTER = 3600.0


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def claim(directory: Path, keep: bool = False) -> None:
    """Mark *directory* as this process's, for :func:`sweep` in later runs; *keep*
    (``--qb-keep-workdirs``): never removed."""
    pid = os.getpid()
    fd = os.open(directory / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": pid, "start": _start_ticks(pid), **({"keep": True} if keep else {})}, f)


def _owner_gone(directory: Path, now: float) -> str | None:
    """Why *directory*'s run is dead (None if it may be alive or is not ours)."""
    marker = directory / OWNER_FILE
    try:
        st = marker.lstat()
    except FileNotFoundError:
        try:
            st = directory.lstat()
        except OSError:
            return None
        if st.st_uid != os.geteuid() or now - st.st_mtime < UNMARKED_AFTER:
            return None
        return f"no owner, untouched for {(now - st.st_mtime) / 3600:.1f} h"
    except OSError:
        return None
    if st.st_uid != os.geteuid():
        return None  # another user's run: not ours to judge
    try:
        owner = json.loads(marker.read_text())
        pid, start = int(owner["pid"]), owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("keep") or pid == os.getpid() or (start is not None and _start_ticks(pid) == start):
        return None
    return f"pid {pid} gone"


def bases(basetemp: str | None) -> list[Path]:
    """Where a run's directories may be: /dev/shm (the default base), ``$TMPDIR``,
    /tmp (socket dirs) and *basetemp* (``--qb-basetemp``)."""
    out = [Path("/dev/shm"), Path(tempfile.gettempdir()), Path("/tmp")]
    return out + ([Path(basetemp)] if basetemp else [])


def sweep(bases: Iterable[Path | str]) -> list[str]:
    """Remove dead runs' directories directly below *bases*; returns ``path (why)`` for each."""
    removed: list[str] = []
    now = time.time()
    seen: set[Path] = set()
    for given in bases:
        base = Path(given)
        if base in seen:
            continue
        seen.add(base)
        try:
            entries = [e for e in base.iterdir() if e.name.startswith(PREFIXES)]
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink() or not entry.is_dir():
                continue
            why = _owner_gone(entry, now)
            if why is None:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(f"{entry} ({why})")
    return removed
