"""The process registry never signals a process group it no longer owns."""
from __future__ import annotations

import os
import signal

from pytest_qemublock.host import procfs
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
    # The shell exits at once, leaving its background child in the group.
    proc = reg.spawn(["sh", "-c", "sleep 60 & echo $! > child; exit 3"], name="wrapper",
                     log_dir=tmp_path, cwd=tmp_path)
    assert proc.wait_exit(10)
    child = int((tmp_path / "child").read_text())
    assert proc.returncode == 3
    # The child was killed with the group while the leader was still a zombie.
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if not procfs.running(child):
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


def test_a_reaped_process_leaves_the_registry(tmp_path):
    """Stopped, killed or exited and waited for: the registry holds no dead process,
    and the state journal no longer lists it."""
    from pytest_qemublock.host.process import read_state

    state = tmp_path / "state.procs.jsonl"
    reg = ProcessRegistry(state)
    stopped = reg.spawn(["sleep", "60"], name="stopped", log_dir=tmp_path)
    killed = reg.spawn(["sleep", "60"], name="killed", log_dir=tmp_path)
    exited = reg.spawn(["true"], name="exited", log_dir=tmp_path)
    kept = reg.spawn(["sleep", "60"], name="kept", log_dir=tmp_path)
    try:
        stopped.stop()
        killed.kill()
        assert exited.wait(10) == 0
        assert reg.tracked() == [kept], [p.name for p in reg.tracked()]
        assert [p["name"] for p in read_state(state)[1]] == ["kept"]
    finally:
        reg.kill_all()
    assert reg.tracked() == []
