"""The matrix summary, the --qb-results file, qemublock-diff and JUnit properties.

The inner projects here are fake suites: plain tests that carry the ``qb.*``
user properties the real suites get at collection, and pass, fail, skip,
xfail or error on purpose. No QEMU is started, except by the JUnit test, which
resolves two (identical) builds to see the build versions reported.
"""
from __future__ import annotations

import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_qemublock.reporting import report
from pytest_qemublock.reporting.report import diff_main, program_name, render_matrix, render_text, strip_build

from helpers import BASE_ARGS, link_dir

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
    assert (t["scenario"], t["backend"], t["format"], t["interface"]) == ("open", "file-rw", "raw", "blockdev")
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


# -- rendering, ids and program names (no inner run) -----------------------------------------


def _cells(n_backends: int, builds: tuple[str, ...] = ("b1",)) -> dict:
    return {(b, s, f"backend-number-{k}"): {"passed": 120, "failed": 3, "skipped": 11}
            for b in builds for s in ("open", "reopen") for k in range(n_backends)}


@pytest.mark.parametrize("width", [60, 80, 100, 132])
@pytest.mark.parametrize("n", [1, 5, 30])
def test_render_never_exceeds_the_width(width, n):
    title, lines = render_matrix(_cells(n, ("b72", "b10")), ["b72", "b10"], {}, width=width)
    text = render_text(lines)
    assert all(len(line) <= width for line in text.splitlines()), text
    # every cell is somewhere, once per build and row
    assert text.count("120✓ 3F 11s") == 2 * 2 * n


def test_render_splits_columns_it_cannot_transpose():
    cells = {("b", f"scenario-{s}", f"backend-{k}"): {"passed": 1} for s in range(30) for k in range(30)}
    title, lines = render_matrix(cells, ["b"], {}, width=80)
    text = render_text(lines)
    assert "backends 1/" in text or "scenarios 1/" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_render_ascii_fallback():
    title, lines = render_matrix({("b", "open", "file"): {"passed": 2, "skipped": 1}}, ["b"],
                                 {"b": {"version": "7.2.22"}}, unicode=False)
    text = render_text(lines)
    assert text.isascii() and "2p 1s" in text and "build: b = QEMU 7.2.22" in text
    assert title == "qemublock matrix: scenario x backend"


@pytest.mark.parametrize(("nodeid", "build", "want"), [
    ("s/t.py::test_open[b72-file-rw-raw]", "b72", "s/t.py::test_open[file-rw-raw]"),
    ("s/t.py::test_open[file-rw-b72]", "b72", "s/t.py::test_open[file-rw]"),
    ("s/t.py::test_smoke[b72]", "b72", "s/t.py::test_smoke"),
    ("s/t.py::test_open[qemu-10.0-file-rw]", "qemu-10.0", "s/t.py::test_open[file-rw]"),
    ("s/t.py::test_open[b720-file]", "b72", "s/t.py::test_open[b720-file]"),  # not a whole part
    ("s/t.py::test_plain", "b72", "s/t.py::test_plain"),
])
def test_strip_build(nodeid, build, want):
    assert strip_build(nodeid, [build]) == want


@pytest.mark.parametrize(("argv", "want"), [
    (["/usr/bin/qemu-system-x86_64", "-M", "none"], "qemu-system-x86_64"),
    (["setpriv", "--reuid=65534", "--clear-groups", "--pdeathsig", "SIGKILL", "--",
      "/x/qemu-storage-daemon", "--blockdev", "x"], "qemu-storage-daemon"),
    (["nsenter", "-t", "12", "-m", "--", "mount", "-o", "remount,ro", "/tmp/qemu.img"], "mount"),
    (["sh", "-c", "timeout 5 qemu-img info x"], "qemu-img"),
    (["sh", "-c", 'echo x >> "$1"', "sh", "/tmp/qemu.img"], "sh"),
    (["timeout", "5", "/usr/bin/qemu-io", "-c", "read 0 1"], "qemu-io"),
    (["unshare", "--mount", "--propagation", "private", "true"], "true"),
    (["setpriv", "--reuid=65534", "--", "bash", "-c", 'exec 3<&13; LISTEN_FDS=1 exec "$@"', "bash",
      "/x/qemu-nbd", "-f", "raw"], "qemu-nbd"),
])
def test_program_name_looks_through_wrappers(argv, want):
    assert program_name(None, argv) == want


# -- processes started per case ------------------------------------------------------------


def test_results_count_processes_per_case(pytester, tmp_path):
    fake_img = tmp_path / "bin" / "qemu-img"
    fake_img.parent.mkdir()
    fake_img.write_text("#!/bin/sh\nexit 0\n")
    fake_img.chmod(0o755)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_procs=f'''
import subprocess, pytest
QB = {{"scenario": "open", "backend": "file-rw"}}

@pytest.fixture
def tool():
    subprocess.run([{str(fake_img)!r}, "create"], check=True)   # setup: counted for the case
    yield
    subprocess.run(["env", {str(fake_img)!r}, "info"], check=True)  # teardown, wrapped

def test_two_qemu_one_other(tool, build):
    subprocess.run(["true"], check=True)

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


def _results(tests: dict[str, tuple[str, str]], builds: list[str]) -> dict:
    """A results file: nodeid -> (outcome, build)."""
    return {"format": "qemublock-results", "version": 1, "build_order": builds, "builds": {},
            "tests": {n: {"outcome": o, "build": b} for n, (o, b) in tests.items()}}


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_diff_two_files_reports_changes_and_exits_1_on_regression(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _results({
        "s.py::t[file-ro]": ("passed", "b72"), "s.py::t[file-rw]": ("passed", "b72"),
        "s.py::t[nbd]": ("failed", "b72"), "s.py::t[gone]": ("passed", "b72"),
        "s.py::t[same]": ("skipped", "b72")}, ["b72"]))
    b = _write(tmp_path / "b.json", _results({
        "s.py::t[file-ro]": ("failed", "b10"), "s.py::t[file-rw]": ("skipped", "b10"),
        "s.py::t[nbd]": ("passed", "b10"), "s.py::t[new]": ("error", "b10"),
        "s.py::t[same]": ("skipped", "b10")}, ["b10"]))
    assert diff_main([a, b]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "changed: 3 (regressions: 1, fixed: 1), new: 1, missing: 1, unchanged: 1" in out
    assert "s.py::t[file-ro]: passed -> failed" in out
    assert out.index("s.py::t[file-ro]: passed -> failed") < out.index("s.py::t[nbd]: failed -> passed")
    assert "s.py::t[file-rw]: passed -> skipped" in out
    assert "s.py::t[new]: (absent) -> error" in out
    assert "s.py::t[gone]: passed -> (absent)" in out
    # the other way round, nbd regressed; a file against itself has no change
    assert diff_main([b, a]) == 1
    assert "s.py::t[nbd]: passed -> failed" in capsys.readouterr().out
    assert diff_main([a, a]) == 0
    assert "changed: 0 (regressions: 0, fixed: 0), new: 0, missing: 0, unchanged: 5" in \
        capsys.readouterr().out


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


#: the console script, installed next to this interpreter by `pip install -e .`
DIFF = str(Path(sys.executable).with_name("qemublock-diff"))


def test_diff_console_script_and_errors(tmp_path, pytester):
    if not Path(DIFF).is_file():
        pytest.skip(f"{DIFF} not installed (pip install -e .)")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = pytester.run(DIFF, str(bad), str(bad))
    assert r.ret == 2 and "not a qemublock results file" in r.stderr.str()
    three = _write(tmp_path / "three.json", _results(
        {"t[a-x]": ("passed", "a"), "t[b-x]": ("passed", "b"), "t[c-x]": ("passed", "c")}, ["a", "b", "c"]))
    r = pytester.run(DIFF, three)
    assert r.ret == 2 and "--builds" in r.stderr.str()
    r = pytester.run(DIFF, three, "--builds", "a", "zz")
    assert r.ret == 2 and "no cases of build 'zz'" in r.stderr.str()
    r = pytester.run(DIFF, three, "--builds", "a", "c", "--json")
    assert r.ret == 0 and json.loads(r.stdout.str())["unchanged"] == 1


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


def test_symbols_are_one_per_outcome():
    assert set(report._SYMBOLS) == set(report.OUTCOMES)
    assert len(set(report._SYMBOLS.values())) == len(report.OUTCOMES)
