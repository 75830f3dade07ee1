"""Directories of dead runs are removed by the next run; a live run's never (host/leftovers.py)."""
from __future__ import annotations

import json
import os
import subprocess
import time

from pytest_qemublock.host import leftovers


def _dir(base, name, owner=None, age=0.0):
    d = base / name
    d.mkdir()
    (d / "image").write_bytes(b"x")
    if owner is not None:
        (d / leftovers.OWNER_FILE).write_text(json.dumps(owner))
    if age:
        t = time.time() - age
        os.utime(d, (t, t))
    return d


def test_sweep_removes_dead_runs_dirs_only(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        start = leftovers._start_ticks(live.pid)
        gone = _dir(tmp_path, "qb-w0-dead", {"pid": dead.pid, "start": "1"})
        sock = _dir(tmp_path, "qbs-dead", {"pid": dead.pid, "start": "1"})
        reused = _dir(tmp_path, "qbd-reused", {"pid": live.pid, "start": str(int(start) - 1)})
        busy = _dir(tmp_path, "qb-w1-live", {"pid": live.pid, "start": start})
        old = _dir(tmp_path, "qb-main-old", age=leftovers.UNMARKED_AFTER + 60)
        fresh = _dir(tmp_path, "qb-main-fresh")  # an older plugin's live run, or before claim()
        other = _dir(tmp_path, "unrelated-dir", {"pid": dead.pid, "start": "1"})
        kept = _dir(tmp_path, "qb-main-kept", {"pid": dead.pid, "start": "1", "keep": True})
        mine = _dir(tmp_path, "qb-main-mine")
        leftovers.claim(mine)

        removed = leftovers.sweep([tmp_path, str(tmp_path)])

        assert sorted(removed) == sorted([
            f"{gone} (pid {dead.pid} gone)", f"{sock} (pid {dead.pid} gone)",
            f"{reused} (pid {live.pid} gone)", f"{old} (no owner, untouched for 1.0 h)"])
        for d in (gone, sock, reused, old):
            assert not d.exists()
        for d in (busy, fresh, other, mine, kept):
            assert d.exists()
    finally:
        live.kill()
        live.wait()
