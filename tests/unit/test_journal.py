"""The state journal cannot be used against the run: private dir, checked entries."""
from __future__ import annotations

import json
import os

import pytest

from pytest_qemublock.host.journal import StateDir, StateDirError, parse_journal


def test_the_state_dir_is_created_private(tmp_path):
    d = tmp_path / "state"
    StateDir(d).close()
    assert (d.stat().st_mode & 0o777) == 0o700


def test_a_state_dir_others_can_reach_is_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o1777)
    with pytest.raises(StateDirError, match=r"has mode 1777, not 0700: refused"):
        StateDir(d)


def test_a_symlinked_state_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(StateDirError, match=r"is a symlink: refused"):
        StateDir(tmp_path / "state")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory owned by another uid")
def test_a_state_dir_of_another_user_is_refused(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(StateDirError, match=r"is owned by uid 65534, not 0: refused"):
        StateDir(d)


def test_a_journal_symlink_is_never_followed(tmp_path):
    """A planted symlink named like our journal: we replace it, never write through it."""
    state = StateDir(tmp_path / "state")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "state" / f"{os.getpid()}.procs.jsonl").symlink_to(victim)
    from pytest_qemublock.host.journal import StateJournal

    StateJournal(state, "tok").sync({})
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "state" / f"{os.getpid()}.procs.jsonl").is_symlink()
    assert state.read("x.procs.jsonl") is None


def test_corrupt_entries_are_counted_and_skipped():
    text = "".join(json.dumps(e) + "\n" for e in [
        {"owner": 4242, "token": "t"},
        {"+": 100, "start": "5", "name": "qemu"},
        {"+": "100; rm -rf /", "start": "5"},  # not a pid
        {"+": 1, "start": "5", "name": "init"},  # never pid 1
        {"+": 101, "start": None, "name": "exited before its start time was read"},
        {"+": 103, "start": "soon", "name": "bad start"},
        ["not", "an", "object"],
    ]) + "garbage\n" + '{"+": 102, "sta'
    got = parse_journal(text)
    assert got.owner == 4242 and got.token == "t"
    assert got.live == {100: ("5", "qemu")}
    assert got.corrupt == 5
