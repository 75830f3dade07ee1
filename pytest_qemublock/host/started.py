"""Counting the processes a pytest process starts, where they are started.

The report shows, per case, which programs it started (how many QEMU launches a
case costs is a speed figure). Every start goes through ``process.py``
(``ProcessRegistry.spawn`` and ``run``), which names the program, so nothing has
to guess it from a command line.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence


class StartCounter:
    """How many processes of each program this pytest process started since the last
    :meth:`take`; :func:`run` and :meth:`ProcessRegistry.spawn` feed :data:`STARTED`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def note(self, program: str) -> None:
        with self._lock:
            self._counts[program] += 1

    def take(self) -> dict[str, int]:
        """The counts so far, and start again from zero."""
        with self._lock:
            out = dict(self._counts)
            self._counts.clear()
        return out


#: One per pytest process: the reporting plugin takes it per test phase.
STARTED = StartCounter()


def program_of(argv: Sequence[str], program: str | None) -> str:
    """What a start counts as: *program* if the caller named it (the real program
    behind a wrapper like nsenter), else the basename of ``argv[0]``."""
    if program:
        return program
    return os.path.basename(str(argv[0])) if argv else "?"
