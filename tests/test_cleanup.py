"""No QEMU outlives its test: crashes, timeouts, hangs, Ctrl-C, SIGTERM, SIGKILL, xdist."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import assert_no_leak, leftovers, our_processes, wait_gone
from pytest_qemublock.host import procfs
from pytest_qemublock.host.journal import RUN_ENV, parse_journal

BLOCKDEV = '''json.dumps({"driver": "file", "node-name": "f0", "filename": str(img.path),
                         "read-only": True})'''

CRASH_SUITE = f'''
import json, os, signal

def test_qemu_crashes(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-global", "no-such-driver.prop=1", "-blockdev", {BLOCKDEV})
    os.kill(vm.pid, signal.SIGSEGV)
    vm.execute("query-status")
'''


def test_crash_fails_with_signal_and_stderr(inner):
    inner.suite(CRASH_SUITE)

    r = inner.run()

    assert r.ret == pytest.ExitCode.TESTS_FAILED
    # the call fails (QMP saw QEMU die) with one crash line; teardown does not report it again
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([
        "CRASH: qemu-system-x86_64 of build default killed by SIGSEGV [[]qemu, pid *[]], found during "
        "QMP query-status, *s after its start; stderr: 'qemu-system-x86_64: warning: global "
        "no-such-driver.prop has invalid class name'",
    ])
    assert "found at shutdown" not in r.stdout.str() and "ERROR at teardown" not in r.stdout.str()
    assert "ExecInterruptedError" not in r.stdout.str()  # no qemu.qmp internals leak out
    assert_no_leak(inner, timeout=0.5)


START_FAILS_SUITE = '''
def test_qemu_refuses_to_start(qemu):
    qemu.start("-device", "virtio-blk-pci,drive=nonexistent")
'''


def test_refused_start_shows_stderr_and_leaves_nothing(inner):
    inner.suite(START_FAILS_SUITE)

    r = inner.run()

    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([
        "E * pytest_qemublock.qemu.instance.LaunchError: qemu exited during start-up",
        "E * command: *qemu-system-x86_64 -M none * -device virtio-blk-pci,drive=nonexistent",
        "E * status: exit status 1",
        "E * stderr: qemu-system-x86_64: -device virtio-blk-pci,drive=nonexistent: *",
    ])
    assert_no_leak(inner, timeout=0.5)


TIMEOUT_SUITE = '''
import time

def test_event_never_comes(qemu):
    vm = qemu.start()
    t0 = time.monotonic()
    try:
        vm.wait_event("NEVER", timeout=0.5)
    finally:
        print(f"waited {time.monotonic() - t0:.2f}s")
'''


def test_event_timeout_fails_with_qmp_timeout(inner):
    inner.suite(TIMEOUT_SUITE)

    r = inner.run()

    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([
        "E * pytest_qemublock.qemu.qmp.QmpTimeout: qemu: event NEVER * did not arrive within 0.5s "
        "(unconsumed events: none)",
    ])
    line = next(ln for ln in r.outlines if ln.startswith("waited "))
    assert 0.5 <= float(line.split()[1].rstrip("s")) < 3.0, line
    assert "ERROR at teardown" not in r.stdout.str()  # a live QEMU quits cleanly afterwards
    assert_no_leak(inner, timeout=0.5)


HUNG_SUITE = '''
import os, signal

def test_qemu_hangs(qemu):
    vm = qemu.start()
    os.kill(vm.pid, signal.SIGSTOP)
    vm.execute("query-status", timeout=0.5)
'''


def test_hung_qemu_times_out_and_is_killed(inner):
    inner.suite(HUNG_SUITE)

    t0 = time.monotonic()
    r = inner.run("--qb-timeout-factor=0.1")  # shutdown waits 1s instead of 10s
    elapsed = time.monotonic() - t0

    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines([
        "E * pytest_qemublock.qemu.qmp.QmpTimeout: qemu: QMP query-status got no answer within 0.5s"])
    # quit (1s) + wait (1s) + SIGTERM (1s) + SIGKILL, and a 5s try at the failure snapshot
    assert elapsed < 30, f"the inner run took {elapsed:.1f}s"
    assert_no_leak(inner, timeout=0.5)


STRAY_SUITE = '''
import os
from pathlib import Path

def test_starts_a_stray_process(qb_session, qb_evidence):
    proc = qb_session.registry.spawn(["sleep", "300"], name="stray", log_dir=qb_evidence.log_dir)
    Path(os.environ["QB_MARKER"]).write_text(str(proc.pid))
'''


def test_processes_left_running_are_killed_at_session_end(inner, monkeypatch, host):
    marker = inner.path / "stray.pid"
    monkeypatch.setenv("QB_MARKER", str(marker))
    inner.suite(STRAY_SUITE)

    r = inner.run()

    r.assert_outcomes(passed=1)
    pid = int(marker.read_text())
    r.stdout.fnmatch_lines([f"qemublock: killed processes still running at session end: "
                            f"stray (pid {pid}, killed by SIGKILL)"])
    assert wait_gone(inner.token, 0.5, names=("sleep",)) == []
    assert leftovers(host, [pid]) == [], "ps still shows the stray process"


SLEEPER_SUITE = f'''
import json, os, time
from pathlib import Path

def test_sleeps_with_qemu(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", {BLOCKDEV})
    Path(os.environ["QB_MARKER"]).write_text(str(vm.pid))
    if os.environ.get("QB_WAIT") == "qmp":  # interrupted with qemu.qmp's tasks pending
        vm.wait_event("NEVER_SENT", timeout=300)
    time.sleep(300)
'''


def _start_sleeper(inner, monkeypatch, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Start an inner run whose test sleeps with QEMU up; return it and QEMU's pid."""
    marker = inner.path / "qemu.pid"
    monkeypatch.setenv("QB_MARKER", str(marker))
    # a private TMPDIR: the crash-recovery state files of this run stay out of /tmp
    tmp = inner.path / "tmp"
    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    inner.suite(SLEEPER_SUITE)
    proc = inner.popen(*args)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        if proc.poll() is not None:
            pytest.fail(f"inner run ended early ({proc.returncode}):\n{inner.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"QEMU never came up:\n{inner.output()}")
        time.sleep(0.05)
    qemu_pid = int(marker.read_text())
    # the scan for leftovers must be able to see this very QEMU, or it proves nothing
    assert f"{qemu_pid} qemu-system-x86" in our_processes(inner.token)
    return proc, qemu_pid


@pytest.mark.parametrize("sig, wait", [(signal.SIGINT, "sleep"), (signal.SIGTERM, "sleep"),
                                       (signal.SIGTERM, "qmp"), (signal.SIGINT, "qmp")],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-in-QMP-wait", "SIGINT-in-QMP-wait"])
def test_interrupted_session_leaves_nothing(inner, monkeypatch, sig, wait):
    """Interrupted, a run stops its QEMUs without waiting on a QMP session the interrupt
    broke: a quit nobody answers waited out the 10 s shutdown timeout."""
    monkeypatch.setenv("QB_WAIT", wait)
    proc, qemu_pid = _start_sleeper(inner, monkeypatch)
    if wait == "qmp":
        time.sleep(0.5)  # into the event wait, on qmp.py's event loop

    proc.send_signal(sig)
    t0 = time.monotonic()
    rc = proc.wait(30)
    stopping = time.monotonic() - t0

    out = inner.output()
    assert rc == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out
    # pytest's interrupted summary, then nothing from asyncio's pending tasks at exit
    noise = [line for line in out.splitlines()
             if any(s in line for s in ("no running event loop", "Task was destroyed",
                                        "never awaited", "Exception ignored"))]
    assert noise == [], out
    assert stopping < 8, f"the interrupted run took {stopping:.1f}s to stop:\n{out}"
    assert_no_leak(inner, timeout=0.5)
    assert os.listdir(inner.basetemp) == [], "the work dir is removed on interrupt too"


@pytest.mark.parametrize("sandbox", ["sandbox", "no-sandbox"])
def test_sigkilled_pytest_takes_qemu_down(inner, monkeypatch, sandbox):
    """In the sandbox the kernel kills QEMU with the PID namespace's init (QEMU has no
    death signal of its own there); without one, QEMU's death signal does."""
    if sandbox == "no-sandbox":
        monkeypatch.setenv("QB_SANDBOX", "off")
    proc, qemu_pid = _start_sleeper(inner, monkeypatch)
    in_sandbox = os.readlink(f"/proc/{qemu_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert in_sandbox == (sandbox == "sandbox" and os.geteuid() == 0), inner.output()
    state_dir = inner.path / "tmp" / f"qemublock-{os.getuid()}-procs"
    recorded = parse_journal((state_dir / f"{proc.pid}.procs.jsonl").read_text())
    assert recorded.owner == proc.pid and qemu_pid in recorded.live, recorded  # for the next run

    proc.kill()
    proc.wait(10)
    # no cleanup code ran in pytest, yet QEMU dies with it
    survivors = wait_gone(inner.token, timeout=5.0)

    # The next run (same TMPDIR) finds the state file, reaps whatever survived
    # (a dead QEMU that its new parent has not reaped yet does not count), says
    # so in its header, and removes the file. It runs even when QEMU survived,
    # so that a failure here leaves nothing behind either.
    # (it uses the plugin: a run that does not leaves the state files alone)
    inner.suite("def test_plain(qb_session):\n    pass\n", name="test_next")
    r = inner.run("test_next.py")
    assert r.ret == 0, r.stdout.str()
    reaped = [line for line in r.outlines if "killed processes left by an earlier crashed run" in line]
    assert survivors == [], f"QEMU outlived the SIGKILLed pytest: {survivors}; next run: {reaped}"
    assert reaped == []
    assert not (state_dir / f"{proc.pid}.procs.jsonl").exists()
    assert_no_leak(inner, timeout=0.5)


def test_next_run_reaps_survivors_of_a_crashed_run(inner, monkeypatch):
    """Processes recorded by a dead run are killed and reported when they provably are
    the same processes (start time) and that run's (its token in their environment);
    everything else is left alone."""
    tmp = inner.path / "tmp"
    state_dir = tmp / f"qemublock-{os.getuid()}-procs"
    state_dir.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("TMPDIR", str(tmp))
    token = "0123456789abcdef"
    of_run = {**os.environ, RUN_ENV: token}
    dead = subprocess.Popen(["true"])
    dead.wait()
    survivor = subprocess.Popen(["sleep", "300"], start_new_session=True, env=of_run)
    reused = subprocess.Popen(["sleep", "300"], start_new_session=True, env=of_run)  # pid "reused"
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)  # right pid, no token
    foreign = subprocess.Popen(["sleep", "300"], start_new_session=True, env=of_run)  # a live run's
    try:
        def start(pid: int) -> str:
            ticks = procfs.start_ticks(pid)
            assert ticks is not None
            return ticks

        def journal(path: Path, owner: int, *entries: dict) -> None:
            lines = [{"owner": owner, "token": token}, *entries]
            path.write_text("".join(json.dumps(e) + "\n" for e in lines))

        journal(state_dir / f"{dead.pid}.procs.jsonl", dead.pid,
                {"+": survivor.pid, "start": start(survivor.pid), "name": "qemu-left-behind"},
                {"+": reused.pid, "start": str(int(start(reused.pid)) - 1), "name": "not-ours"},
                {"+": stranger.pid, "start": start(stranger.pid), "name": "no-token"},
                {"+": 4194399, "start": "1", "name": "ended-normally"}, {"-": 4194399})
        journal(state_dir / "alive.procs.jsonl", os.getpid(),
                {"+": foreign.pid, "start": start(foreign.pid), "name": "busy-elsewhere"})
        # The plugin activates with its first fixture (no ini flag, no QEMU option):
        # the reaped ones are then reported at the end of the run.
        inner.suite("def test_plain(qb_session):\n    pass\n")

        r = inner.run()

        assert r.ret == 0, r.stdout.str()
        r.stdout.fnmatch_lines([f"qemublock: killed processes left by an earlier crashed run: "
                                f"qemu-left-behind (pid {survivor.pid})"])
        assert survivor.wait(5) == -signal.SIGKILL
        assert reused.poll() is None and foreign.poll() is None and stranger.poll() is None
        for name in ("not-ours", "busy-elsewhere", "no-token"):
            assert name not in r.stdout.str()
        assert not (state_dir / f"{dead.pid}.procs.jsonl").exists()
        assert (state_dir / "alive.procs.jsonl").exists()
    finally:
        for p in (survivor, reused, stranger, foreign):
            p.kill()
            p.wait()


XDIST_SUITE = '''
import json, os
from pathlib import Path

import pytest

def _record(qb_session, name):
    out = Path(os.environ["QB_MARKER"])
    out.mkdir(exist_ok=True)
    (out / name).write_text(f"{os.environ['PYTEST_XDIST_WORKER']} {qb_session.root}")

@pytest.mark.parametrize("n", range(4))
def test_opens_image(qemu, images, qb_session, n):
    _record(qb_session, f"ok{n}")
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", json.dumps({"driver": "file", "node-name": "f0",
                                            "filename": str(img.path), "read-only": True}))
    assert vm.node_ro("f0") is True

def test_fails(qemu, images, qb_session):
    _record(qb_session, "failing")
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", json.dumps({"driver": "file", "node-name": "f0",
                                            "filename": str(img.path), "read-only": True}))
    assert vm.node_ro("f0") is False, "deliberate"
'''


@pytest.mark.own_probe  # both workers must share one probe of their own
def test_xdist_two_workers(inner, monkeypatch):
    records = inner.path / "records"
    monkeypatch.setenv("QB_MARKER", str(records))
    inner.suite(XDIST_SUITE)

    r = inner.run("-n", "2")

    assert r.ret == pytest.ExitCode.TESTS_FAILED, r.stdout.str()
    r.assert_outcomes(passed=4, failed=1)
    seen = {f.name: f.read_text().split(" ", 1) for f in records.iterdir()}
    workers = {w for w, _ in seen.values()}
    assert workers == {"gw0", "gw1"}, seen
    for worker, root in seen.values():
        assert Path(root).name.startswith(f"qb-{worker.replace('gw', 'w')}-"), root
        assert not Path(root).exists(), f"{root} was not removed"
    # evidence travels from the worker to the controller's report
    d = inner.evidence / "test_suite.py__test_fails"
    assert (d / "qemu-nodes.json").is_file()
    r.stdout.fnmatch_lines(["*- qemublock evidence -*", f"full evidence: {d}"])
    # both workers share one probe (under a file lock)
    assert len(list((inner.path / ".pytest_cache/d/qemublock").glob("probe-*.json"))) == 1
    assert_no_leak(inner, timeout=0.5)


def test_a_corrupt_journal_is_skipped_with_a_warning(inner, monkeypatch):
    """One bad line in another run's journal: a warning naming the file, never an
    INTERNALERROR (before, every later run of that user died on it)."""
    tmp = inner.path / "tmp"
    state_dir = tmp / f"qemublock-{os.getuid()}-procs"
    state_dir.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("TMPDIR", str(tmp))
    journal = state_dir / "4194301.procs.jsonl"
    journal.write_text('{"owner": 4194301, "token": "t"}\n{"+": "x"}\nnot json\n')
    inner.suite("def test_plain(qb_session):\n    pass\n")

    r = inner.run()

    out = r.stdout.str() + r.stderr.str()
    assert r.ret == 0, out
    r.stdout.fnmatch_lines([f"qemublock: skipped 2 corrupt line(s) in {journal}"])
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert not journal.exists(), "a dead run's journal is removed once read"
