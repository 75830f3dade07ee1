"""The process registry never signals a process group it no longer owns."""
from __future__ import annotations

import os
import signal
import time

from pytest_qemublock.host import procfs
from pytest_qemublock.host.journal import StateDir
from pytest_qemublock.host.process import ProcessRegistry


def test_no_killpg_after_the_leader_was_reaped(tmp_path, monkeypatch):
    """pid_max is often 32768: a reaped leader's pid (= its group id) is soon
    someone else's. Stopping, killing or kill_all() after the exit must not
    signal that group."""
    reg = ProcessRegistry(StateDir(tmp_path / "state"))
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
    reg = ProcessRegistry(StateDir(tmp_path / "state"))
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
        if not procfs.running(child):
            break
        os.sched_yield()
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the wrapper's child outlived its process group")
    reg.kill_all()


def test_state_journal_records_live_processes_and_compacts(tmp_path):
    from types import SimpleNamespace

    from pytest_qemublock.host.journal import StateDir, StateJournal, parse_journal

    state = StateDir(tmp_path / "state")
    journal = StateJournal(state, "tok")
    path = journal.path
    a, b = SimpleNamespace(start_ticks="11", name="qemu"), SimpleNamespace(start_ticks="22", name="nbd")
    journal.sync({100: a, 200: b})
    journal.sync({200: b})
    got = parse_journal(path.read_text())
    assert (got.owner, got.token, got.live, got.corrupt) == (os.getpid(), "tok", {200: ("22", "nbd")}, 0)
    with open(path, "a") as f:
        f.write('{"+": 300, "sta')  # torn by a SIGKILL mid-write: ignored, not corrupt
    got = parse_journal(path.read_text())
    assert (got.live, got.corrupt) == ({200: ("22", "nbd")}, 0)
    for pid in range(1000, 1000 + StateJournal.COMPACT_AFTER):
        journal.sync({pid: a})
    journal.sync({})
    assert path.read_text() == f'{{"owner": {os.getpid()}, "token": "tok"}}\n', \
        "not compacted when nothing was live"


def test_a_reaped_process_leaves_the_registry(tmp_path):
    """Stopped, killed or exited and waited for: the registry holds no dead process,
    and the state journal no longer lists it."""
    from pytest_qemublock.host.journal import StateDir, parse_journal

    reg = ProcessRegistry(StateDir(tmp_path / "state"), "tok")
    stopped = reg.spawn(["sleep", "60"], name="stopped", log_dir=tmp_path)
    killed = reg.spawn(["sleep", "60"], name="killed", log_dir=tmp_path)
    exited = reg.spawn(["true"], name="exited", log_dir=tmp_path)
    kept = reg.spawn(["sleep", "60"], name="kept", log_dir=tmp_path)
    try:
        stopped.stop()
        killed.kill()
        assert exited.wait(10) == 0
        assert reg.tracked() == [kept], [p.name for p in reg.tracked()]
        journal = tmp_path / "state" / f"{os.getpid()}.procs.jsonl"
        assert [name for _, name in parse_journal(journal.read_text()).live.values()] == ["kept"]
    finally:
        reg.kill_all()
    assert reg.tracked() == []


def test_spawned_processes_carry_the_run_token(tmp_path):
    """The next run only kills a recorded pid whose environment shows the run's token."""
    from pytest_qemublock.host.journal import RUN_ENV, carries_token

    reg = ProcessRegistry(token="t0k3n")
    proc = reg.spawn(["sleep", "60"], name="s", log_dir=tmp_path)
    try:
        # the pid is sleep's (setpriv, outside a sandbox, execs it), its environment ours plus the token
        # (until the child's first execve, /proc shows pytest's environment: wait for it)
        deadline = time.monotonic() + 5
        while not carries_token(proc.pid, "t0k3n") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert carries_token(proc.pid, "t0k3n")
        assert not carries_token(proc.pid, "other")
        assert not carries_token(os.getpid(), "t0k3n")
        assert RUN_ENV not in os.environ or os.environ[RUN_ENV] != "t0k3n"
    finally:
        reg.kill_all()
