"""Shared targets (targets.shared): reused within a module, replaced when dead, stopped after."""
from __future__ import annotations

from helpers import assert_no_leak, running

RECORD = '''
import json, os
from pytest_qemublock.scenario import drive as observe

def _record(name, pid):
    with open(os.environ["QB_MARKER"], "a") as f:
        f.write(f"{name} {pid}\\n")
'''


def run_recording(inner, monkeypatch, suite: str):
    """Run *suite* (which calls ``_record(name, pid)``); return the result and the pids."""
    marker = inner.path / "pids.txt"
    monkeypatch.setenv("QB_MARKER", str(marker))
    inner.suite(RECORD + suite)
    r = inner.run("-p", "no:randomly", "-p", "no:random_order")
    return r, dict(line.split() for line in marker.read_text().splitlines())


POOL_SUITE = '''

def test_first(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("first", t.server.proc.pid)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")

def test_second_reuses(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("second", t.server.proc.pid)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")

def test_third_kills_it(targets):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("third", t.server.proc.pid)
    os.kill(t.server.proc.pid, 9)
    t.server.proc.wait_exit(10)  # dead within this case, not only by the next one

def test_fourth_gets_a_new_one(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("fourth", t.server.proc.pid)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")
'''


def test_shared_targets_are_reused_replaced_and_stopped(inner, monkeypatch):
    r, pids = run_recording(inner, monkeypatch, POOL_SUITE)

    # the third case killed the shared qemu-nbd while it used it: that is a crash of the build's
    # process (qemu/crashes.py), reported by that case; the fourth gets a fresh one
    r.assert_outcomes(passed=3, failed=1)
    r.stdout.fnmatch_lines(["*_ test_third_kills_it _*",
                            "CRASH: qemu-nbd of build default killed by SIGKILL [[]qemu-nbd, pid *[]], "
                            "found after the test body, *"])
    assert pids["first"] == pids["second"] == pids["third"], f"not shared within the module: {pids}"
    assert pids["fourth"] != pids["third"], f"a dead shared server was handed out again: {pids}"
    assert running([int(p) for p in pids.values()]) == [], "shared servers outlived their module"
    assert_no_leak(inner)


HOTPLUG_SUITE = '''
def _add(targets, name):
    t = targets.shared("file", "rw")
    vm = targets.hotplug_qemu(t)
    _record(name, vm.pid)
    assert vm.nodes() == {}, f"{name} was lent a QEMU with nodes in it"
    return t, vm, t.node("n0", **{"read-only": True})

def test_first(targets):
    t, vm, opts = _add(targets, "first")
    assert observe.add_node(vm, opts, t).ro == {"n0": True}
    observe.assert_released(vm, t, "first")

def test_second_reuses_and_leaves_a_node(targets):
    t, vm, opts = _add(targets, "second")
    vm.execute("blockdev-add", opts)
    vm.execute("blockdev-add", t.node("extra", **{"read-only": True}))
    observe.assert_released(vm, t, "second")  # n0 goes, "extra" stays: must fail

def test_third_gets_a_fresh_one(targets):
    t, vm, opts = _add(targets, "third")
    vm.execute("blockdev-add", opts)
    observe.assert_released(vm, t, "third")
'''


def test_hotplug_qemu_is_lent_clean_or_replaced(inner, monkeypatch):
    r, pids = run_recording(inner, monkeypatch, HOTPLUG_SUITE)

    r.assert_outcomes(passed=2, failed=1)
    r.stdout.fnmatch_lines(["*second: blockdev-del n0 left nodes ?'extra'? in qemu-hotplug*"])
    assert pids["first"] == pids["second"], f"the hot-plug QEMU was not shared: {pids}"
    assert pids["third"] != pids["second"], f"a QEMU with a node left was lent again: {pids}"
    assert running([int(p) for p in pids.values()]) == [], "hot-plug QEMUs outlived their module"
    assert_no_leak(inner)
