"""Counting the processes the plugin starts, where they are started (host/process.py)."""
from __future__ import annotations

import os
from pathlib import Path

from pytest_qemublock.host import procfs
from pytest_qemublock.host.process import STARTED, ProcessRegistry, StartCounter, run


def test_counter_counts_and_take_starts_again():
    c = StartCounter()
    c.note("qemu-img")
    c.note("qemu-img")
    c.note("sh")
    assert c.take() == {"qemu-img": 2, "sh": 1}
    assert c.take() == {}


def test_run_counts_the_program_or_what_the_caller_names():
    STARTED.take()
    run(["/bin/true"], timeout=10, check=True)
    run(["env", "true"], timeout=10, check=True, program="true")  # a wrapper: named
    run(["env", "true"], timeout=10, check=True)
    assert STARTED.take() == {"true": 2, "env": 1}


def test_spawn_counts_too(tmp_path: Path):
    registry = ProcessRegistry()
    STARTED.take()
    proc = registry.spawn(["sleep", "5"], name="s", log_dir=tmp_path)
    try:
        wrapped = registry.spawn(["env", "sleep", "5"], name="w", log_dir=tmp_path, program="sleep")
    finally:
        registry.kill_all()
    assert proc.returncode is not None and wrapped.returncode is not None
    assert STARTED.take() == {"sleep": 2}


def test_host_facts_start_no_process():
    """fd modes are read from /proc directly: nothing to count (testinfra's local
    backend ran a shell per read, ~10 ms each)."""
    with open(os.devnull) as f:
        STARTED.take()
        assert procfs.fd_modes(os.getpid(), os.devnull)
        assert STARTED.take() == {}
        assert f.readable()
