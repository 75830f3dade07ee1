"""The process registry never signals a process group it no longer owns."""
from __future__ import annotations

import os
import signal

from pytest_qemublock.host.process import ProcessRegistry


def test_no_killpg_after_the_leader_was_reaped(tmp_path, monkeypatch):
    """pid_max is often 32768: a reaped leader's pid (= its group id) is soon
    someone else's. Stopping, killing or kill_all() after the exit must not
    signal that group."""
    reg = ProcessRegistry(tmp_path / "state.json")
    proc = reg.spawn(["true"], name="short", log_dir=tmp_path)
    assert proc.wait(10) == 0
    calls = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: calls.append((pid, sig)))
    proc.stop()
    proc.kill()
    reg.kill_all()
    assert calls == [], f"signalled a reaped process group: {calls}"


def test_exit_is_seen_without_reaping_until_the_group_is_killed(tmp_path):
    """alive() notices the exit, and the group (a wrapper's child here) dies before the reap."""
    reg = ProcessRegistry(tmp_path / "state.json")
    # The shell exits at once, leaving its background child in the group. The child
    # writes its pid as /proc has it (cd -P /proc/self): $! would be its pid in the
    # sandbox's PID namespace (host/sandbox.py), another process's outside.
    proc = reg.spawn(["sh", "-c", '( cd -P /proc/self && echo "${PWD#/proc/}" > "$0" && exec sleep 60 ) & '
                      'while [ ! -s "$0" ]; do :; done; exit 3', str(tmp_path / "child")],
                     name="wrapper", log_dir=tmp_path, cwd=tmp_path)
    assert proc.wait_exit(10)
    child = int((tmp_path / "child").read_text())
    assert proc.returncode == 3
    # The child was killed with the group while the leader was still a zombie.
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        os.sched_yield()
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the wrapper's child outlived its process group")
    reg.kill_all()


def test_state_journal_records_live_processes_and_compacts(tmp_path):
    from types import SimpleNamespace

    from pytest_qemublock.host.process import StateJournal, read_state

    path = tmp_path / "x.procs.jsonl"
    journal = StateJournal(path)
    a, b = SimpleNamespace(start_ticks="11", name="qemu"), SimpleNamespace(start_ticks="22", name="nbd")
    journal.sync({100: a, 200: b})
    journal.sync({200: b})
    assert read_state(path) == (os.getpid(), [{"pid": 200, "start": "22", "name": "nbd"}])
    with open(path, "a") as f:
        f.write('{"+": 300, "sta')  # torn by a SIGKILL mid-write: ignored
    assert read_state(path)[1] == [{"pid": 200, "start": "22", "name": "nbd"}]
    for pid in range(1000, 1000 + StateJournal.COMPACT_AFTER):
        journal.sync({pid: a})
    journal.sync({})
    assert path.read_text() == f'{{"owner": {os.getpid()}}}\n', "not compacted when nothing was live"
