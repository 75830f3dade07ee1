"""Evidence of failed tests: command lines, stderr, QMP transcripts, node snapshots."""
from __future__ import annotations

import json
import re

import pytest

from helpers import REAL

FAILING_SUITE = '''
import json

def test_ro_expectation_wrong(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-global", "no-such-driver.prop=1", "-blockdev", json.dumps(
        {"driver": "file", "node-name": "f0", "filename": str(img.path), "read-only": True}))
    assert vm.node_ro("f0") is False, "deliberately wrong expectation"

def test_passes(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", json.dumps(
        {"driver": "file", "node-name": "p0", "filename": str(img.path), "read-only": True}))
    assert vm.node_ro("p0") is True
'''

FAILED_DIR = "test_suite.py__test_ro_expectation_wrong"
PASSED_DIR = "test_suite.py__test_passes"


def test_failed_test_keeps_full_evidence(inner):
    inner.suite(FAILING_SUITE)
    stale = inner.evidence / "stale-from-an-earlier-run"
    stale.mkdir(parents=True)

    r = inner.run()

    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.assert_outcomes(passed=1, failed=1)
    assert not stale.exists(), "a run that keeps evidence first empties the older runs' evidence"
    assert sorted(p.name for p in inner.evidence.iterdir() if not p.name.startswith(".")) == [FAILED_DIR]
    d = inner.evidence / FAILED_DIR

    commands = (d / "commands.txt").read_text()
    m = re.search(r"^# qemu \(pid (\d+)\)\n(.*)$", commands, re.M)
    assert m, commands
    assert m.group(2).startswith(f"{REAL['system']} -M none ")
    assert "-global no-such-driver.prop=1 -blockdev " in m.group(2)
    assert "f0" in m.group(2)

    [stderr] = d.glob("*-qemu.stderr")
    assert "global no-such-driver.prop has invalid class name" in stderr.read_text()

    entries = [json.loads(line) for line in (d / "qmp-qemu.jsonl").read_text().splitlines()]
    assert {e["dir"] for e in entries} >= {">", "<"}
    assert all(e["peer"] == "qemu" and isinstance(e["t"], float) for e in entries)
    times = [e["t"] for e in entries]
    assert times == sorted(times), times
    assert "QMP" in entries[0]["msg"]  # the greeting comes first
    assert {"execute": "query-named-block-nodes"} in [e["msg"] for e in entries if e["dir"] == ">"]
    replies = [e["msg"] for e in entries if e["dir"] == "<" and "return" in e["msg"]]
    assert any(n["node-name"] == "f0" for r_ in replies for n in r_["return"])

    nodes = json.loads((d / "qemu-nodes.json").read_text())
    assert [n["node-name"] for n in nodes] == ["f0"]
    assert nodes[0]["ro"] is True

    assert (d / "tools.log").read_text().startswith("$ ")  # qemu-img / qemu-io runs

    # the report: the excerpt section of the failed test, pointing to the full evidence
    r.stdout.fnmatch_lines([
        "*_ test_ro_expectation_wrong _*",
        "*- qemublock evidence -*",
        "context: build=default (*)",
        "$ *qemu-system-x86_64 -M none *",
        "  -> qemu (pid *, *)",
        "  stderr| qemu-system-x86_64: warning: global no-such-driver.prop has invalid class name",
        "QMP qmp-qemu.jsonl (last * of *):",
        f"full evidence: {d}",
    ])
    assert r.stdout.str().count("- qemublock evidence -") == 1  # not for the passing test


def test_retention_none_keeps_nothing(inner):
    inner.suite(FAILING_SUITE)

    r = inner.run("--qb-evidence=none")

    r.assert_outcomes(passed=1, failed=1)
    assert not inner.evidence.exists() or [
        p for p in inner.evidence.iterdir() if not p.name.startswith(".")] == []
    r.stdout.fnmatch_lines(["*- qemublock evidence -*", "QMP qmp-qemu.jsonl (last * of *):"])
    assert "full evidence:" not in r.stdout.str()


def test_retention_all_keeps_passing_tests_too(inner):
    inner.suite(FAILING_SUITE)

    r = inner.run("--qb-evidence=all")

    r.assert_outcomes(passed=1, failed=1)
    assert sorted(p.name for p in inner.evidence.iterdir()
                  if not p.name.startswith(".")) == [PASSED_DIR, FAILED_DIR]
    passed = inner.evidence / PASSED_DIR
    assert "-blockdev" in (passed / "commands.txt").read_text()
    lines = (passed / "qmp-qemu.jsonl").read_text().splitlines()
    assert any('"dir": ">"' in line for line in lines) and any('"dir": "<"' in line for line in lines)
    assert not list(passed.glob("*-nodes.json")), "snapshots are taken for failures only"
    assert r.stdout.str().count("- qemublock evidence -") == 1


def test_run_keeping_nothing_leaves_older_evidence(inner):
    """`pytest tests` or an all-green run must not wipe the last failing run's evidence."""
    inner.suite(FAILING_SUITE)
    older = inner.evidence / "from-the-last-failing-run"
    older.mkdir(parents=True)

    r = inner.run("-k", "test_passes")

    r.assert_outcomes(passed=1)
    assert older.is_dir(), "evidence of an earlier run was deleted by a run that kept nothing"


def test_evidence_dir_option(inner):
    inner.suite(FAILING_SUITE)
    target = inner.path / "elsewhere" / "ev"

    r = inner.run(f"--qb-evidence-dir={target}")

    r.assert_outcomes(passed=1, failed=1)
    assert (target / FAILED_DIR / "qemu-nodes.json").is_file()
    assert not inner.evidence.exists()
    r.stdout.fnmatch_lines([f"full evidence: {target / FAILED_DIR}"])


CRASH_AT_TEARDOWN = '''
import os, signal, time

def test_qemu_dies_quietly(qemu):
    vm = qemu.start("-global", "no-such-driver.prop=1")
    os.kill(vm.pid, signal.SIGSEGV)
    time.sleep(0.3)  # the test body itself never notices
'''


def test_crash_found_at_teardown_keeps_evidence(inner):
    """A QEMU that died unnoticed by the test body fails the test right after it (crashes.py,
    not as a teardown error); its evidence is kept all the same."""
    inner.suite(CRASH_AT_TEARDOWN)

    r = inner.run()

    out = r.stdout.str()
    assert r.ret == pytest.ExitCode.TESTS_FAILED, out
    r.assert_outcomes(failed=1)
    assert "INTERNALERROR" not in out and "ERROR at teardown" not in out
    d = inner.evidence / "test_suite.py__test_qemu_dies_quietly"
    [stderr] = d.glob("*-qemu.stderr")
    assert "invalid class name" in stderr.read_text()
    r.stdout.fnmatch_lines([
        "*_ test_qemu_dies_quietly _*",
        "CRASH: qemu-system-x86_64 of build default killed by SIGSEGV [[]qemu, pid *[]], found after the "
        "test body, *s after its start; stderr: 'qemu-system-x86_64: warning: global no-such-driver.prop "
        "has invalid class name'",
        "*- qemublock evidence -*",
        "  -> qemu (pid *, killed by SIGSEGV)",
        f"full evidence: {d}",
    ])
