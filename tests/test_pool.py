"""Shared targets (targets.shared): reused within a module, replaced when dead, stopped after."""
from __future__ import annotations


from helpers import assert_no_leak, running

POOL_SUITE = '''
import json, os

def _record(name, target):
    with open(os.environ["QB_MARKER"], "a") as f:
        f.write(f"{name} {target.server.proc.pid}\\n")

def test_first(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("first", t)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")

def test_second_reuses(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("second", t)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")

def test_third_kills_it(targets):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("third", t)
    os.kill(t.server.proc.pid, 9)

def test_fourth_gets_a_new_one(targets, qemu):
    t = targets.shared("nbd-qemu-nbd-unix", "ro")
    _record("fourth", t)
    vm = qemu.start("-blockdev", json.dumps(t.node("n0", **{"read-only": True})))
    assert vm.node_ro("n0")
'''


def test_shared_targets_are_reused_replaced_and_stopped(inner, monkeypatch):
    marker = inner.path / "pids.txt"
    monkeypatch.setenv("QB_MARKER", str(marker))
    inner.suite(POOL_SUITE)

    r = inner.run("-p", "no:randomly", "-p", "no:random_order")

    r.assert_outcomes(passed=4)
    pids = dict(line.split() for line in marker.read_text().splitlines())
    assert pids["first"] == pids["second"] == pids["third"], f"not shared within the module: {pids}"
    assert pids["fourth"] != pids["third"], f"a dead shared server was handed out again: {pids}"
    assert running([int(p) for p in pids.values()]) == [], "shared servers outlived their module"
    assert_no_leak(inner)
