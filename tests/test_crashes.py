"""A death of a process of the build under test is never silent (qemu/crashes.py).

Each inner suite kills a real process (kill -9, SIGABRT, SIGSEGV, or QEMU's
own abort) and must fail exactly the case that used it, with one first line
``CRASH: <program> of build <name> <how> [...], found <when>, <s> after its
start; stderr: ...``; the case after it gets a fresh process and passes.
"""
from __future__ import annotations

import re

import pytest

from helpers import REAL, assert_no_leak, write_script
from test_pool import run_recording

#: the first line of a crash report (the program, the build, how, when)
CRASH = (r"CRASH: {prog} of build default {how} \[{name}, pid \d+\], found {at}, "
         r"\d+\.\d\ds after its start; stderr: .*")


def failure_first_lines(r: pytest.RunResult) -> dict[str, str]:
    """test name (with its parameters) -> the first line of its failure, from the short
    summary (the inner run's terminal is made wide enough: see ``wide``)."""
    out = {}
    for line in r.outlines:
        m = re.match(r"(?:FAILED|ERROR) [^:\s]+::(\S+) - (.*)", line)
        if m:
            out[m.group(1)] = m.group(2).removeprefix("Failed: ")
    return out


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # short summary lines are cut to the terminal width


MID_CASE = '''
import pytest, signal
from pytest_qemublock.scenario import outcome

@pytest.mark.parametrize("sig", ["SIGKILL", "SIGABRT", "SIGSEGV"])
def test_killed_before_a_check(qemu, qemu_build, sig):
    vm = qemu.start()
    os.kill(vm.pid, getattr(signal, sig))
    vm.proc.wait_exit(10)
    # what a driver observes of a dead QEMU: no fd left
    outcome.check(outcome.Expect(True, fds={"image": "O_RDONLY"}), outcome.Outcome(True, fds={"image": []}),
                  what="open n0", build=qemu_build.name)

def test_killed_and_swallowed(qemu):
    vm = qemu.start()
    _record("swallowed", vm.pid)
    os.kill(vm.pid, 9)
    vm.proc.wait_exit(10)
    try:
        vm.execute("query-status")
    except Exception:
        pass  # a suite that swallows the death still fails

def test_next_gets_a_fresh_one(qemu):
    vm = qemu.start()
    _record("next", vm.pid)
    assert vm.execute("query-status")["status"] == "prelaunch"
'''


def test_a_qemu_killed_mid_case_fails_that_case_with_one_line(inner, monkeypatch):
    r, pids = run_recording(inner, monkeypatch, MID_CASE.replace("import pytest", "import os, pytest"))

    r.assert_outcomes(passed=1, failed=4)
    first = failure_first_lines(r)
    for sig in ("SIGKILL", "SIGABRT", "SIGSEGV"):
        line = first[f"test_killed_before_a_check[{sig}]"]
        assert re.fullmatch(CRASH.format(prog="qemu-system-x86_64", how=f"killed by {sig}", name="qemu",
                                         at="at open n0"), line), line
    line = first["test_killed_and_swallowed"]
    assert re.fullmatch(CRASH.format(prog="qemu-system-x86_64", how="killed by SIGKILL", name="qemu",
                                     at="during QMP query-status"), line), line
    # reported once: no second report of the same death at teardown
    assert "found at shutdown" not in r.stdout.str() and "ERROR at teardown" not in r.stdout.str()
    assert pids["next"] != pids["swallowed"]
    assert_no_leak(inner)


ABORT = '''
from pytest_qemublock.qemu.qmp import QmpError

def test_unexpected_abort(qemu):
    vm = qemu.start()
    vm.try_execute("blockdev-reopen", {"options": []})
'''


def test_an_abort_names_its_assertion(inner):
    """QEMU 7.2 aborts on blockdev-reopen with options=[] (known_bugs.EMPTY_REOPEN_ABORTS): a
    case that does not predict it fails with the assertion text."""
    inner.suite(ABORT)
    r = inner.run("-rf")

    r.assert_outcomes(failed=1)
    line = failure_first_lines(r)["test_unexpected_abort"]
    how = r"killed by SIGABRT \(Assertion `bs_queue != NULL' failed\.\)"
    assert re.fullmatch(CRASH.format(prog="qemu-system-x86_64", how=how, name="qemu",
                                     at="during QMP blockdev-reopen"), line), line
    assert_no_leak(inner)


#: kill -9 and wait until the whole process has exited (pidfd: its threads too; a zombie
#: leader whose threads still exit is not reaped yet)
KILL_AND_WAIT = '''
import select

def _kill_and_wait(pid):
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, 9)
        assert select.select([fd], [], [], 10)[0], f"pid {pid} still there 10 s after SIGKILL"
    finally:
        os.close(fd)
'''

SHARED = KILL_AND_WAIT + '''
def _pid_file():
    return os.environ["QB_MARKER"] + ".victim"

def test_a_uses_it(targets):
    t = targets.shared(BACKEND, STORAGE)
    vm = VICTIM(targets, t)
    _record("a", vm.pid)
    with open(_pid_file(), "w") as f:
        f.write(str(vm.pid))

def test_b_kills_it_between_cases():
    # no plugin fixture: this is not a case of the build, just time passing
    pid = int(open(_pid_file()).read())
    _kill_and_wait(pid)

def test_c_finds_it_dead(targets):
    t = targets.shared(BACKEND, STORAGE)
    _record("c", VICTIM(targets, t).pid)

def test_d_gets_a_fresh_one(targets):
    t = targets.shared(BACKEND, STORAGE)
    vm = VICTIM(targets, t)
    _record("d", vm.pid)
'''

HOTPLUG = ("BACKEND, STORAGE = 'file', 'rw'\n"
           "VICTIM = lambda targets, t: targets.hotplug_qemu(t)\n")
QEMU_NBD = ("BACKEND, STORAGE = 'nbd-qemu-nbd-unix', 'ro'\n"
            "VICTIM = lambda targets, t: t.server.proc\n")
#: the hot-plug QEMU's death is found by targets.shared() (the pool checks every process
#: of a shared target) or, had it not exited yet, by targets.hotplug_qemu()
LENT = r"when lent to this case \((hot-plug QEMU on )?shared {}\)"


@pytest.mark.parametrize("victim, prog, name, at", [
    pytest.param(HOTPLUG, "qemu-system-x86_64", "qemu-hotplug", LENT.format("file-rw"), id="hotplug-qemu"),
    pytest.param(QEMU_NBD, "qemu-nbd", "qemu-nbd", LENT.format("nbd-qemu-nbd-unix-ro"), id="qemu-nbd-export"),
])
def test_a_shared_process_killed_between_cases_fails_the_next_case(inner, monkeypatch, victim, prog, name,
                                                                   at):
    r, pids = run_recording(inner, monkeypatch, victim + SHARED)

    r.assert_outcomes(passed=3, failed=1)
    first = failure_first_lines(r)
    assert list(first) == ["test_c_finds_it_dead"], r.stdout.str()
    assert re.fullmatch(CRASH.format(prog=prog, how="killed by SIGKILL", name=name, at=at),
                        first["test_c_finds_it_dead"]), first["test_c_finds_it_dead"]
    assert "c" not in pids, "the dead process was lent out"
    assert pids["d"] != pids["a"], f"a dead shared process was handed out again: {pids}"
    assert_no_leak(inner)


TOOL = '''
def test_qemu_img_crashes(qemu_tools, images):
    img = images.from_recipe("raw")
    res = qemu_tools.img("map", img.path, check=False)  # even a caller that judges the result itself

def test_next_runs(qemu_tools, images):
    img = images.from_recipe("raw")
    assert qemu_tools.img("map", img.path).returncode == 0
'''


def test_a_qemu_img_killed_by_a_signal_fails_the_case(inner):
    """qemu-img / qemu-io are run to completion (qemu/tools.py): one killed by a signal is a
    crash whatever the caller expected of its exit status."""
    flag = inner.path / "crash-once"
    flag.touch()
    script = write_script(inner.path / "crashing" / "qemu-img", f"""
        if [ "$1" = map ] && [ -e '{flag}' ]; then rm '{flag}'; kill -SEGV $$; fi
        exec '{REAL["img"]}' "$@"
    """)
    inner.suite(TOOL)
    r = inner.run(f"--qemu-img={script}")

    r.assert_outcomes(passed=1, failed=1)
    line = failure_first_lines(r)["test_qemu_img_crashes"]
    assert re.fullmatch(r"CRASH: qemu-img of build default killed by SIGSEGV, found running img map "
                        r"\S+/t0001/img/raw\.img; stderr: \(empty\)", line), line


DYNAMIC = '''
import os, signal
from pytest_qemublock.expectations import dynamic_aro as dynamic
from pytest_qemublock.scenario import outcome
from pytest_qemublock.scenario.writers import Attach, WriterBench, export

def test_dynamic_case(qemu, targets, qemu_tools, qemu_build, qemu_caps):
    """A step of the dynamic suite (test_dynamic.py) whose -M pc QEMU is killed mid-case."""
    bench = WriterBench(qemu, targets.target("file", "rw", "raw"), qemu_tools, targets.server_ctx.sockdir)
    model = dynamic.Model(bench.target, qemu_caps)
    checks = outcome.CaseCheck("dynamic", "file-rw-raw-export", build=qemu_build.name, caps=qemu_caps)
    checks.step(model.expect(True, "opened"), bench.state(), what="after open")
    os.kill(bench.vm.pid, signal.SIGKILL)
    bench.vm.proc.wait_exit(10)
    step = Attach(export("e1"))
    checks.step(model.step(step), bench.run(step), what=f"step 1 ({step})")
    bench.close()
'''


def test_a_dynamic_case_whose_qemu_dies_says_so(inner):
    """Not "image fd modes none ... succeeded": the crash of the -M pc QEMU, first."""
    inner.suite(DYNAMIC)
    r = inner.run()

    r.assert_outcomes(failed=1)
    line = failure_first_lines(r)["test_dynamic_case"]
    assert re.fullmatch(CRASH.format(prog="qemu-system-x86_64", how="killed by SIGKILL", name="qemu",
                                     at="during QMP block-export-add"), line), line
    assert "fd modes" not in r.stdout.str()
    assert_no_leak(inner)


MODULE_END = KILL_AND_WAIT + '''
PID = []

def test_a_uses_it(targets):
    PID.append(targets.shared("nbd-qemu-nbd-unix", "ro").server.proc.pid)
    _record("a", PID[0])

def test_b_kills_it_after_the_last_case():
    _kill_and_wait(PID[0])
'''


def test_a_shared_process_dead_at_the_end_of_its_module_is_reported(inner, monkeypatch):
    """No later case finds it: the pool's teardown does."""
    r, _ = run_recording(inner, monkeypatch, MODULE_END)

    r.assert_outcomes(passed=2, errors=1)
    r.stdout.fnmatch_lines(["*ERROR at teardown of test_b_kills_it_after_the_last_case*",
                            "cleanup of shared targets failed: CRASH: qemu-nbd of build default killed by "
                            "SIGKILL [[]qemu-nbd, pid *[]], found at the end of the module, *"])
    assert_no_leak(inner)


LATE_FIXTURE = '''
import os, signal

def test_takes_qemu_during_the_call(request):
    qemu = request.getfixturevalue("qemu")  # as suites/test_dynamic.py takes its bench
    vm = qemu.start()
    os.kill(vm.pid, signal.SIGKILL)
    vm.proc.wait_exit(10)
    vm.execute("query-status")
'''


def test_a_crash_is_reported_once_when_the_fixtures_come_during_the_call(inner):
    """The crash watch exists only once the case asked for a QEMU; a case that asks during
    its body must still get the crash line as its failure, and no second report at teardown."""
    inner.suite(LATE_FIXTURE)
    r = inner.run("-rfE")

    r.assert_outcomes(failed=1)
    line = failure_first_lines(r)["test_takes_qemu_during_the_call"]
    assert re.fullmatch(CRASH.format(prog="qemu-system-x86_64", how="killed by SIGKILL", name="qemu",
                                     at="during QMP query-status"), line), line
    assert "found at shutdown" not in r.stdout.str() and "ERROR at teardown" not in r.stdout.str()
    assert_no_leak(inner)
