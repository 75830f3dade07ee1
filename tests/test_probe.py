"""Probing a build's capabilities: cached once, reused, invalidated, and used by qemu_requires."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import PROBE_DIR, REAL, SUITE_TEST, link_dir, write_script

#: these count the probe's launches: every inner run starts without a probe
pytestmark = pytest.mark.own_probe

DUMP_SUITE = '''
import dataclasses, json, os
from pathlib import Path

def test_dump_caps(qemu_caps):
    caps = dataclasses.asdict(qemu_caps)
    caps["accel"] = qemu_caps.accel
    Path(os.environ["QB_MARKER"]).write_text(json.dumps(caps))
'''


def _counting_system(inner) -> tuple[str, Path]:
    """A qemu-system-x86_64 that logs each invocation, then execs the real one."""
    log = inner.path / "launches.log"
    script = write_script(inner.path / "counting" / "qemu-system-x86_64", f"""
        echo "$*" >> '{log}'
        exec '{REAL["system"]}' "$@"
    """)
    return f"--qemu-system={script}", log


def _launches(log) -> dict[str, int]:
    lines = log.read_text().splitlines() if log.exists() else []
    return {
        "version": sum(line == "--version" for line in lines),
        "accel-help": sum(line == "-accel help" for line in lines),
        "qmp-probe": sum("-mon chardev=qmp0" in line and "-blockdev" not in line for line in lines),
        "test": sum("-blockdev" in line for line in lines),
    }


def _probe_files(inner):
    return sorted((inner.path / PROBE_DIR).glob("probe-*.json"))


def test_probe_is_written_once_and_reused(inner):
    option, log = _counting_system(inner)
    inner.suite()

    r = inner.run(option)
    assert r.ret == 0, r.stdout.str()
    [cache] = _probe_files(inner)
    first = (cache.stat().st_mtime_ns, cache.read_text())
    assert _launches(log) == {"version": 1, "accel-help": 1, "qmp-probe": 1, "test": 1}

    r = inner.run(option)
    assert r.ret == 0, r.stdout.str()
    assert _probe_files(inner) == [cache]
    assert (cache.stat().st_mtime_ns, cache.read_text()) == first, "the cache was rewritten"
    # validation runs --version each time; the probe itself does not run again
    assert _launches(log) == {"version": 2, "accel-help": 1, "qmp-probe": 1, "test": 2}

    # --cache-clear throws the cache away: the next run probes again
    r = inner.run(option, "--cache-clear")
    assert r.ret == 0, r.stdout.str()
    assert _launches(log)["qmp-probe"] == 2


def test_probe_is_redone_when_the_binary_changes(inner):
    option, log = _counting_system(inner)
    inner.suite()
    assert inner.run(option).ret == 0
    [old] = _probe_files(inner)

    script = inner.path / "counting" / "qemu-system-x86_64"
    st = script.stat()
    os.utime(script, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rebuilt"
    r = inner.run(option)

    assert r.ret == 0, r.stdout.str()
    assert len(_probe_files(inner)) == 2 and old in _probe_files(inner)
    assert _launches(log)["qmp-probe"] == 2


#: cache files that must be probed again: torn or of another format (not JSON), and ones
#: that parse but do not fit Capabilities (edited, another version's), which must not
#: reach the tests (``"driver_errors": null`` gave AttributeErrors)
BAD_CACHES = {
    "torn": lambda good: '{"version": [7, 2',
    "driver_errors-null": lambda good: json.dumps({**good, "driver_errors": None}),
    "commands-a-string": lambda good: json.dumps({**good, "commands": "query-version"}),
    "version-two-numbers": lambda good: json.dumps({**good, "version": [7, 2]}),
    "features-of-numbers": lambda good: json.dumps({**good, "features": {"BlockdevOptions": [1]}}),
}


def test_a_bad_probe_cache_is_replaced(inner):
    """One project, one run per bad cache file (a run each, not a project each: a first
    run's probe per case was half of these tests' cost)."""
    option, log = _counting_system(inner)
    inner.suite(SUITE_TEST + CAPS_USER)
    assert inner.run(option).ret == 0
    [cache] = _probe_files(inner)
    good = json.loads(cache.read_text())

    for n, (what, bad) in enumerate(BAD_CACHES.items(), start=2):
        cache.write_text(bad(good))

        r = inner.run(option)

        assert r.ret == 0, f"{what}: {r.stdout.str()}"
        assert json.loads(cache.read_text()) == good, what
        assert _launches(log)["qmp-probe"] == n, what


CAPS_USER = '''
def test_uses_caps(qemu_caps):
    assert qemu_caps.driver_loads("file") is False  # not a module driver: "not probed"
    assert qemu_caps.has_command("query-version")
'''


@pytest.mark.parametrize("how", ["validated", "lazy"])
def test_a_build_that_cannot_be_probed_is_one_error_line(inner, monkeypatch, qemu10, how):
    """QEMU 10.0 without its module dir loads Debian 7.2's block-curl.so in the probe and
    aborts (util/module.c module_load_dso): one line naming the build, the binary and the
    assertion, exit 4, before any case; not a traceback per test."""
    binary = qemu10 / "usr/bin/qemu-system-x86_64"
    inner.suite(SUITE_TEST + CAPS_USER)
    if how == "validated":
        inner.ini()
        r = inner.run(f"--qemu-system={binary}")
    else:
        monkeypatch.setenv("QEMU_PROG", str(binary))
        r = inner.run()

    out, err = r.stdout.str(), r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, out + err
    line = (rf"qemublock: build default: cannot probe {re.escape(str(binary))}: killed by SIGABRT "
            rf"at QMP blockdev-add of driver \w+; it said: qemu-system-x86_64: util/module\.c:\d+: "
            rf"module_load_dso: Assertion `.*' failed\.")
    if how == "validated":
        lines = [x for x in r.errlines if x.strip()]
        assert len(lines) == 1 and re.fullmatch("ERROR: " + line, lines[0]), err
        assert "collected" not in out
    else:
        assert re.search(r"Exit: " + line + " !", out), out
        assert "no tests ran" in out
    assert "Traceback" not in out + err and "INTERNALERROR" not in out + err
    assert len((out + err).splitlines()) < 20, out + err


def test_capabilities_of_the_installed_build(inner, monkeypatch):
    dump = inner.path / "caps.json"
    monkeypatch.setenv("QB_MARKER", str(dump))
    inner.suite(DUMP_SUITE)

    r = inner.run()

    assert r.ret == 0, r.stdout.str()
    caps = json.loads(dump.read_text())
    out = subprocess.run([REAL["system"], "--version"], capture_output=True, text=True, check=False).stdout
    version = [int(x) for x in re.search(r"version (\d+)\.(\d+)\.(\d+)", out).groups()]
    assert caps["version"] == version
    assert version >= [7, 2, 0], "these expectations are for QEMU 7.2 or newer"
    # file-posix reopens read-write on demand since QEMU 4.0 (dynamic auto-read-only)
    assert "dynamic-auto-read-only" in caps["features"]["BlockdevOptions.file"]
    # Debian's qemu-system-x86 has no qtest accelerator: TCG, with the vCPU parked by -S
    assert "qtest" not in caps["accelerators"] and "tcg" in caps["accelerators"]
    assert caps["accel"] == "tcg"
    assert "none" in caps["machines"]
    assert {"raw", "qcow2"} <= set(caps["formats"])
    assert {"blockdev-add", "blockdev-del", "query-named-block-nodes"} <= set(caps["commands"])
    assert "BLOCK_JOB_COMPLETED" in caps["events"]
    assert "ro" in caps["members"]["query-named-block-nodes"]
    assert set(caps["driver_errors"]) == {"http", "https", "ssh", "iscsi", "nfs", "rbd", "gluster"}
    # what the test saw is what is cached
    [cache] = _probe_files(inner)
    cached = json.loads(cache.read_text())
    assert cached == {k: v for k, v in caps.items() if k != "accel"}


REQUIRES_SUITE = '''
import pytest

@pytest.mark.qemu_requires(command="no-such-command")
def test_missing_command(qemu):
    raise AssertionError("must not run")

@pytest.mark.qemu_requires(command="blockdev-add")
def test_present_command(qemu_build):
    pass

@pytest.mark.qemu_requires(feature="BlockdevOptions.file:dynamic-auto-read-only")
def test_present_feature(qemu_build):
    pass

@pytest.mark.qemu_requires(feature="BlockdevOptions.file:no-such-feature")
def test_missing_feature(qemu_build):
    raise AssertionError("must not run")

@pytest.mark.qemu_requires(accel="tcg")
def test_present_accel(qemu_build):
    pass

@pytest.mark.qemu_requires(accel="no-such-accel")
def test_missing_accel(qemu_build):
    raise AssertionError("must not run")

@pytest.mark.qemu_requires(driver="no-such-driver")
def test_missing_driver(qemu_build):
    raise AssertionError("must not run")

@pytest.mark.qemu_requires(binary="nbd")
def test_needs_qemu_nbd(qemu_build):
    pass
'''


def test_qemu_requires_skips_with_precise_reasons(inner):
    inner.suite(REQUIRES_SUITE)
    v = _version_str()

    r = inner.run("-rs", "--strict-markers")

    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(passed=4, skipped=4)
    r.stdout.fnmatch_lines_random([
        f"SKIPPED [[]1[]] test_suite.py:*: build default (QEMU {v}) has no QMP command no-such-command",
        f"SKIPPED [[]1[]] test_suite.py:*: build default (QEMU {v}) lacks QAPI feature no-such-feature "
        f"on BlockdevOptions.file",
        "SKIPPED [[]1[]] test_suite.py:*: build default has no accelerator no-such-accel",
        "SKIPPED [[]1[]] test_suite.py:*: build default: block driver no-such-driver does not load "
        "(not probed); install Debian package qemu-block-extra",
    ])


def test_qemu_requires_binary_that_is_missing(inner, monkeypatch):
    bins = link_dir(inner.path / "bins", ("system", "img", "io"))
    monkeypatch.setenv("PATH", str(inner.path / "empty"))
    inner.suite(REQUIRES_SUITE)

    r = inner.run("-rs", "-k", "qemu_nbd", *(f"--qemu-{n}={bins}/{f}" for n, f in (
        ("system", "qemu-system-x86_64"), ("img", "qemu-img"), ("io", "qemu-io"))))

    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] test_suite.py:*: build default has no qemu-nbd (not found on PATH (install "
        "Debian package qemu-utils, or pass --qemu-nbd / set QEMU_NBD_PROG); Debian package qemu-utils)"])


NEW_COMMAND_SUITE = '''
import pytest

@pytest.mark.qemu_requires(command="blockdev-set-active")  # new in QEMU 10.0
def test_inactivate(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", f'{{"driver": "file", "node-name": "f0", "filename": "{img.path}"}}')
    vm.execute("blockdev-set-active", {"node-name": "f0", "active": False})
    assert vm.nodes()["f0"]["active"] is False
'''


def test_requirements_are_checked_per_build(inner, qemu10):
    v72 = link_dir(inner.path / "v72")
    inner.suite(NEW_COMMAND_SUITE)

    r = inner.run(f"--qemu-build=v72={v72}", f"--qemu-build={qemu10}", "-v", "-rs")

    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines_random([
        "*test_suite.py::test_inactivate[[]v72[]] SKIPPED*",
        "*test_suite.py::test_inactivate[[]qemu-10.0[]] PASSED*",
        f"SKIPPED [[]1[]] test_suite.py:*: build v72 (QEMU {_version_str()}) has no QMP command "
        f"blockdev-set-active",
    ])
    assert len(_probe_files(inner)) == 2  # one probe per build


def _version_str() -> str:
    out = subprocess.run([REAL["system"], "--version"], capture_output=True, text=True, check=False).stdout
    return re.search(r"version (\d+\.\d+\.\d+)", out).group(1)
