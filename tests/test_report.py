"""The matrix summary, the --qb-results file, qemublock-diff and JUnit properties,
seen through inner pytest runs (the pure parts are tested in ``unit/``).

The inner projects here are fake suites: plain tests that carry the ``qb.*``
user properties the real suites get at collection, and pass, fail, skip,
xfail or error on purpose. No QEMU is started, except by the JUnit test, which
resolves two (identical) builds to see the build versions reported.
"""
from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import BASE_ARGS, link_dir
from pytest_qemublock.reporting.diff import diff_main

#: Gives every item the qb.* properties named by its `qb` parametrization and
#: a `build` parametrization like the plugin's (b72/b10) when QB_FAKE_BUILDS is set.
CONFTEST = '''
import os
import pytest

BUILDS = [b for b in os.environ.get("QB_FAKE_BUILDS", "").split(",") if b]

def pytest_generate_tests(metafunc):
    if "build" in metafunc.fixturenames:
        metafunc.parametrize("build", BUILDS or ["default"], ids=BUILDS or None)

def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params or {}
        qb = dict(getattr(item.module, "QB", {}))
        qb.update(params.get("qb", {}))
        if BUILDS and "build" in params:
            qb["build"] = params["build"]
        for key, value in qb.items():
            item.user_properties.append(("qb." + key, value))

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")
'''

OUTCOMES_SUITE = '''
import pytest

def qb(scenario, backend, fmt="raw", iface="blockdev"):
    return {"scenario": scenario, "backend": backend, "format": fmt, "interface": iface}

@pytest.mark.parametrize("qb", [qb("open", "file-rw")], ids=["x"])
@pytest.mark.parametrize("i", range(3))
def test_pass(qb, i, build):
    pass

@pytest.mark.parametrize("qb", [qb("open", "file-rw")], ids=["x"])
def test_fail(qb, build):
    assert build != "b10", "b10 regressed"
    assert False, "always fails on " + build

@pytest.mark.parametrize("qb", [qb("open", "nbd-qsd-unix-ro")], ids=["x"])
@pytest.mark.skip(reason="no qsd here")
def test_skip_at_setup(qb, build):
    pass

@pytest.mark.parametrize("qb", [qb("reopen", "nbd-qsd-unix-ro")], ids=["x"])
def test_skip_in_call(qb, build):
    pytest.skip("not today")

@pytest.mark.parametrize("qb", [qb("reopen", "file-rw")], ids=["x"])
@pytest.mark.xfail(reason="known bug", strict=False)
def test_xfail(qb, build):
    assert False

@pytest.mark.parametrize("qb", [qb("reopen", "file-rw")], ids=["x"])
@pytest.mark.xfail(reason="fixed meanwhile", strict=False)
def test_xpass(qb, build):
    pass

@pytest.mark.parametrize("qb", [qb("degrade", "file-rw")], ids=["x"])
def test_teardown_error_after_pass(qb, build, broken_teardown):
    pass

@pytest.mark.parametrize("qb", [qb("degrade", "file-rw")], ids=["x"])
def test_teardown_error_after_fail(qb, build, broken_teardown):
    assert False

@pytest.mark.parametrize("qb", [qb("degrade", "file-rw")], ids=["x"])
def test_setup_error(qb, build, broken_setup):
    pass

def test_no_properties():
    pass
'''

EXPECTED = {  # test name -> outcome (one per item, whatever its phases did)
    "test_pass": "passed", "test_fail": "failed", "test_skip_at_setup": "skipped",
    "test_skip_in_call": "skipped", "test_xfail": "xfailed", "test_xpass": "xpassed",
    "test_teardown_error_after_pass": "error", "test_teardown_error_after_fail": "failed",
    "test_setup_error": "error", "test_no_properties": "passed",
}


@pytest.fixture
def fake(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("QB_FAKE_BUILDS", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fake=OUTCOMES_SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE_ARGS, "-p", "no:cacheprovider", *args, timeout=120)


def matrix_block(result: pytest.RunResult) -> list[str]:
    """The lines of the matrix section (title line excluded)."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "qemublock matrix" in line)
    out = []
    for line in lines[start + 1:]:
        if line.startswith(("=", "qemublock: results", "outcome differs", "same outcome")):
            break
        out.append(line)
    return out


def row(block: list[str], label: str) -> list[str]:
    for line in block:
        if line.split() and line.split()[0] == label:
            return line.split()
    raise AssertionError(f"no row {label!r} in:\n" + "\n".join(block))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


# -- the matrix ------------------------------------------------------------------------


def test_matrix_counts_one_outcome_per_item(fake):
    r = run(fake, "--qb-results=res.json")
    assert r.ret == 1
    block = matrix_block(r)
    text = "\n".join(block)
    assert "✓ passed  F failed  E error  X xpassed  x xfailed  s skipped" in text
    header = row(block, "scenario")
    assert header == ["scenario", "file-rw", "nbd-qsd-unix-ro"]
    # open/file-rw: 3 passed + 1 failed; open/nbd: a skip at setup
    assert row(block, "open") == ["open", "3✓", "1F", "1s"]
    assert row(block, "reopen") == ["reopen", "1X", "1x", "1s"]
    # teardown error after a pass -> E; setup error -> E; failure + teardown error -> F
    assert row(block, "degrade") == ["degrade", "1F", "2E", "·"]
    assert row(block, "(all)") == ["(all)", "3✓", "2F", "2E", "1X", "1x", "2s"]
    # the summary comes once, before pytest's own closing line
    assert sum("qemublock matrix" in line for line in r.outlines) == 1
    assert r.outlines[-1].startswith("=") and "2 failed" in r.outlines[-1]
    assert "3 errors" in r.outlines[-1]


def test_results_file_has_every_case(fake):
    r = run(fake, "--qb-results=out/res.json")
    data = load(fake.path / "out/res.json")
    assert f"results written to {fake.path / 'out/res.json'}" in r.stdout.str()
    assert data["format"] == "qemublock-results" and data["version"] == 1
    assert data["exitstatus"] == 1 and data["workers"] == 0
    tests = data["tests"]
    assert len(tests) == 12
    for nodeid, t in tests.items():
        name = nodeid.split("::")[1].split("[")[0]
        assert t["outcome"] == EXPECTED[name], nodeid
        assert t["duration"] >= 0 and set(t["phases"]) <= {"setup", "call", "teardown"}
    t = tests["test_fake.py::test_pass[default-0-x]"]
    assert (t["scenario"], t["backend"], t["format"], t["interface"]) == (
        "open", "file-rw", "raw", "blockdev")
    assert t["properties"]["qb.scenario"] == "open"
    assert t["case"] == "test_fake.py::test_pass[default-0-x]"  # one build: id kept
    assert tests["test_fake.py::test_no_properties"]["scenario"] == "-"
    assert tests["test_fake.py::test_no_properties"]["properties"] == {}
    assert tests["test_fake.py::test_teardown_error_after_fail[default-x]"]["teardown_error"] is True
    assert "always fails on default" in tests["test_fake.py::test_fail[default-x]"]["message"]
    assert tests["test_fake.py::test_skip_at_setup[default-x]"]["message"] == "no qsd here"
    assert data["totals"] == {"passed": 4, "failed": 2, "error": 2, "xpassed": 1, "xfailed": 1,
                              "skipped": 2}
    cells = {(c["scenario"], c["backend"]): c["counts"] for c in data["matrix"]}
    assert cells[("open", "file-rw")] == {"passed": 3, "failed": 1}
    assert cells[("degrade", "file-rw")] == {"failed": 1, "error": 2}


def test_no_matrix_without_qb_properties(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    r = run(pytester, "--qb-results=res.json")
    assert r.ret == 0
    assert "qemublock matrix" not in r.stdout.str()
    assert load(pytester.path / "res.json")["tests"]["test_no_matrix_without_qb_properties.py::test_a"][
        "outcome"] == "passed"


def test_no_summary_option_hides_the_matrix(fake):
    r = run(fake, "--qb-no-summary")
    assert "qemublock matrix" not in r.stdout.str()
    assert not (fake.path / "res.json").exists()


def test_several_builds_get_sub_rows_and_a_difference_list(fake, monkeypatch):
    monkeypatch.setenv("QB_FAKE_BUILDS", "b72,b10")
    r = run(fake, "--qb-results=res.json")
    block = matrix_block(r)
    assert "scenario × backend × build" in r.stdout.str()
    assert row(block, "scenario")[:2] == ["scenario", "build"]
    i = block.index(next(line for line in block if line.startswith("open ")))
    assert block[i].split() == ["open", "b10", "3✓", "1F", "1s"]  # builds unknown: sorted
    assert block[i + 1].split() == ["b72", "3✓", "1F", "1s"]
    out = r.stdout.str()
    assert "outcome differs between builds for 0 case(s)" not in out
    assert "same outcome on all 2 builds" in out  # both fail test_fail, for different reasons
    data = load(fake.path / "res.json")
    t = data["tests"]["test_fake.py::test_pass[b72-0-x]"]
    assert t["build"] == "b72" and t["case"] == "test_fake.py::test_pass[0-x]"


def test_matrix_fits_100_columns_with_many_backends(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("QB_FAKE_BUILDS", "qemu-7.2,qemu-10.0")
    pytester.makeconftest(CONFTEST)
    backends = [f"nbd-qemu-storage-daemon-{t}-{m}" for t in ("unix", "tcp", "vsock") for m in ("ro", "rw")]
    backends += ["file-rw", "file-erofs", "file-eacces", "nbd-nbdkit-unix-ro"]
    pytester.makepyfile(test_wide=f'''
import pytest
QB = {{"format": "qcow2"}}
@pytest.mark.parametrize("qb", [{{"scenario": s, "backend": b}} for s in
                                ("open", "reopen", "degrade", "dynamic-auto-read-only")
                                for b in {backends!r}])
def test_x(qb, build):
    assert not (qb["backend"] == "file-rw" and build == "qemu-10.0")
''')
    r = run(pytester)
    block = matrix_block(r)
    assert max(len(line) for line in block) <= 100, "\n".join(block)
    assert "backend × scenario × build" in r.stdout.str()  # transposed: 10 backends, 4 scenarios
    assert row(block, "file-rw")[1:] == ["qemu-10.0", "1F", "1F", "1F", "1F"]
    assert row(block, "nbd-qemu-storage-daemon-vsock-rw")[1:] == ["qemu-10.0", "1✓", "1✓", "1✓", "1✓"]


# -- processes started per case ------------------------------------------------------------


def test_results_count_processes_per_case(pytester, tmp_path):
    """Starts through host/process.py are counted per case, wrapped ones by the program
    their caller names; a plain subprocess is not the plugin's and is not counted."""
    fake_img = tmp_path / "bin" / "qemu-img"
    fake_img.parent.mkdir()
    fake_img.write_text("#!/bin/sh\nexit 0\n")
    fake_img.chmod(0o755)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_procs=f'''
import subprocess, pytest
from pytest_qemublock.host.process import run
QB = {{"scenario": "open", "backend": "file-rw"}}

@pytest.fixture
def tool():
    run([{str(fake_img)!r}, "create"], timeout=10, check=True)   # setup: counted for the case
    yield
    run(["env", {str(fake_img)!r}, "info"], timeout=10, check=True, program="qemu-img")  # wrapped

def test_two_qemu_one_other(tool, build):
    run(["true"], timeout=10, check=True)
    subprocess.run(["true"], check=True)  # not through process.py: not counted

def test_none(build):
    pass
''')
    run(pytester, "--qb-results=res.json")
    data = load(pytester.path / "res.json")
    t = data["tests"]["test_procs.py::test_two_qemu_one_other[default]"]
    assert t["procs"] == {"qemu-img": 2, "true": 1} and t["qemu_procs"] == 2
    assert data["tests"]["test_procs.py::test_none[default]"]["qemu_procs"] == 0
    assert data["procs"]["counted"] is True and data["procs"]["tests"]["qemu-img"] == 2


# -- xdist ---------------------------------------------------------------------------------------


def test_xdist_gives_the_same_results_and_one_summary(fake):
    run(fake, "--qb-results=serial.json")
    r = run(fake, "-n", "2", "--qb-results=xdist.json")
    assert sum("qemublock matrix" in line for line in r.outlines) == 1
    serial, xdist = load(fake.path / "serial.json"), load(fake.path / "xdist.json")
    assert xdist["workers"] == 2
    assert {k: v["outcome"] for k, v in xdist["tests"].items()} == \
        {k: v["outcome"] for k, v in serial["tests"].items()}
    assert {t["worker"] for t in xdist["tests"].values()} <= {"gw0", "gw1"}
    assert xdist["matrix"] == serial["matrix"]
    assert row(matrix_block(r), "open") == ["open", "3✓", "1F", "1s"]


# -- qemublock-diff ----------------------------------------------------------------------------


def test_diff_builds_inside_one_results_file(fake, monkeypatch, capsys):
    monkeypatch.setenv("QB_FAKE_BUILDS", "b72,b10")
    run(fake, "--qb-results=res.json")
    path = str(fake.path / "res.json")
    assert diff_main([path, "--builds", "b72", "b10"]) == 0  # test_fail fails on both
    out = capsys.readouterr().out
    assert "changed: 0 (regressions: 0, fixed: 0), new: 0, missing: 0, unchanged: 11" in out
    # a second run in which b10 passes everything that passed on b72, and one more
    fake.makepyfile(test_fake=OUTCOMES_SUITE.replace(
        'assert build != "b10", "b10 regressed"\n    assert False, "always fails on " + build',
        'assert build == "b10"'))
    run(fake, "--qb-results=res2.json")
    # one file, two builds: b72 -> b10
    assert diff_main([str(fake.path / "res2.json"), "--builds", "b72", "b10", "-v"]) == 0
    out = capsys.readouterr().out
    assert "test_fake.py::test_fail[x]: failed -> passed" in out
    # two files with the same two builds: compared build by build
    assert diff_main([path, str(fake.path / "res2.json")]) == 0
    out = capsys.readouterr().out
    assert "test_fake.py::test_fail[x] @b10: failed -> passed" in out
    # one build of each file
    assert diff_main([str(fake.path / "res2.json"), path, "--builds", "b10", "b10"]) == 1
    out = capsys.readouterr().out
    assert "regressions (passed in A, fail in B):\ntest_fake.py::test_fail[x]: passed -> failed" in out


# -- JUnit XML ------------------------------------------------------------------------------------


def test_junit_carries_the_axes_and_build_versions(pytester, tmp_path):
    """Real builds (two names for the installed QEMU): qb.* per test case, versions per suite."""
    a, b = link_dir(tmp_path / "a"), link_dir(tmp_path / "b")
    # a scenario marker, registered the way suites/conftest.py does
    pytester.makeini("[pytest]\nmarkers =\n    open: qemublock scenario: the open matrix\n")
    pytester.makepyfile(test_suite=textwrap.dedent('''
        import pytest

        @pytest.mark.open
        def test_build(qemu_build, record_property):
            record_property("qb.backend", "file-rw")
            record_property("qb.format", "raw")
    '''))
    r = run(pytester, f"--qemu-build=b72={a}", f"--qemu-build=b10={b}", "--junitxml=junit.xml",
            "--qb-results=res.json", "-n", "2")
    assert r.ret == 0, r.stdout.str()
    root = ET.parse(pytester.path / "junit.xml").getroot()
    suite = root.find("testsuite")
    global_props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    version = load(pytester.path / "res.json")["builds"]["b72"]["version"]
    assert global_props == {"qb.build.b72": f"QEMU {version}", "qb.build.b10": f"QEMU {version}"}
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.find("properties")}
             for c in suite.iter("testcase")}
    assert cases == {
        f"test_build[{b}]": {"qb.scenario": "open", "qb.build": b, "qb.backend": "file-rw",
                             "qb.format": "raw"}
        for b in ("b72", "b10")
    }
