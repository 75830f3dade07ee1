"""Which binaries a run tests, and how the report header and --help show it.

Precedence for each binary, highest first: CLI option, iotests environment
variable, ini option, --qemu-build-dir, PATH. Each level gets its own
directory of symlinks to the installed QEMU, so the header's path tells
which level won and its ``[source]`` annotation must agree.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import REAL, binary_line, header_line, link_dir
from pytest_qemublock.qemu.build import BINARIES

LEVELS = ("option", "env", "ini", "builddir", "path")

JUST_BUILD = "def test_build(qemu_build):\n    assert qemu_build.name == 'default'\n"


@pytest.mark.parametrize("level", LEVELS)
def test_highest_configured_source_wins_for_every_binary(inner, monkeypatch, level):
    """Every binary is configured at *level* and at every lower level; *level* must win."""
    configured = LEVELS[LEVELS.index(level):]
    dirs = {lv: link_dir(inner.path / "bins" / lv) for lv in configured}
    args, ini_lines = [], []
    for spec in BINARIES:
        if "option" in dirs:
            args.append(f"{spec.option}={dirs['option'] / spec.filename}")
        if "env" in dirs:
            monkeypatch.setenv(spec.env, str(dirs["env"] / spec.filename))
        if "ini" in dirs:
            ini_lines.append(f"{spec.ini} = {dirs['ini'] / spec.filename}")
    if "builddir" in dirs:
        args.append(f"--qemu-build-dir={dirs['builddir']}")
    monkeypatch.setenv("PATH", f"{dirs['path']}{os.pathsep}{os.environ['PATH']}")
    inner.ini(*ini_lines)
    inner.suite(JUST_BUILD)

    r = inner.run(*args)

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    source = {
        "option": lambda s: f"option {s.option}",
        "env": lambda s: f"${s.env}",
        "ini": lambda s: f"ini {s.ini}",
        "builddir": lambda s: f"--qemu-build-dir {dirs['builddir'].resolve()}",
        "path": lambda s: "PATH",
    }[level]
    for spec in BINARIES:
        want_dir = dirs[level].resolve() if level == "builddir" else dirs[level]
        assert header_line(r.outlines, spec.role) == binary_line(
            spec.role, want_dir / spec.filename, source(spec))


def test_sources_mix_per_binary(inner, monkeypatch):
    """Each binary resolves on its own: one run, five binaries, five different levels
    (PATH below a build dir only when asked for: tests/test_builddir.py has the refusal)."""
    d = {lv: link_dir(inner.path / "bins" / lv) for lv in LEVELS}
    monkeypatch.setenv("QEMU_IMG_PROG", str(d["env"] / "qemu-img"))
    monkeypatch.setenv("PATH", f"{d['path']}{os.pathsep}{os.environ['PATH']}")
    # the build dir has only what it must have, plus qemu-io; qsd falls through to PATH
    partial = link_dir(inner.path / "bins" / "partial", ("system", "img", "io"))
    inner.ini(f"qemu_nbd = {d['ini'] / 'qemu-nbd'}", f"qemu_io = {d['ini'] / 'qemu-io'}")
    inner.suite(JUST_BUILD)

    r = inner.run(f"--qemu-system={d['option'] / 'qemu-system-x86_64'}",
                  f"--qemu-build-dir={partial}", "--qb-allow-mixed-build")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    lines = r.outlines
    assert header_line(lines, "system") == binary_line(
        "system", d["option"] / "qemu-system-x86_64", "option --qemu-system")
    assert header_line(lines, "img") == binary_line("img", d["env"] / "qemu-img", "$QEMU_IMG_PROG")
    assert header_line(lines, "io") == binary_line("io", d["ini"] / "qemu-io", "ini qemu_io")
    assert header_line(lines, "nbd") == binary_line("nbd", d["ini"] / "qemu-nbd", "ini qemu_nbd")
    assert header_line(lines, "qsd") == binary_line(
        "qsd", d["path"] / "qemu-storage-daemon", "PATH, mixed in by --qb-allow-mixed-build")


def test_build_dir_option_beats_ini(inner):
    from_ini = link_dir(inner.path / "bins" / "from-ini")
    from_opt = link_dir(inner.path / "bins" / "from-opt")
    inner.ini(f"qemu_build_dir = {from_ini}")
    inner.suite(JUST_BUILD)

    r = inner.run(f"--qemu-build-dir={from_opt}")
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert header_line(r.outlines, "img") == binary_line(
        "img", from_opt.resolve() / "qemu-img", f"--qemu-build-dir {from_opt.resolve()}")

    r = inner.run()
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert header_line(r.outlines, "img") == binary_line(
        "img", from_ini.resolve() / "qemu-img", f"--qemu-build-dir {from_ini.resolve()}")


def test_missing_optional_binary_is_reported_not_fatal(inner, monkeypatch):
    """Without qemu-nbd/qsd anywhere the run still works; the header says what is missing.
    (A build dir that lacks them is refused instead: tests/test_builddir.py.)"""
    only = link_dir(inner.path / "bins" / "only", ("system", "img", "io"))
    monkeypatch.setenv("PATH", str(only))
    inner.suite()  # opens an image with -blockdev: needs system, img, io only

    r = inner.run()

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    assert header_line(r.outlines, "nbd") == (
        "qemu-nbd              missing: not found on PATH (install Debian package qemu-utils, "
        "or pass --qemu-nbd / set QEMU_NBD_PROG)")
    assert header_line(r.outlines, "qsd").startswith(
        "qemu-storage-daemon   missing: not found on PATH (install Debian package qemu-system-common")


def test_header_shows_build_version_workdir_and_timeout_factor(inner):
    version = _installed_version()
    inner.ini("qb_timeout_factor = 3")
    inner.suite()

    r = inner.run("--qb-evidence=all")
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines([f"qemu build 'default': QEMU {version}"])
    r.stdout.re_match_lines([
        rf"qemublock: work dir {re.escape(str(inner.basetemp))}/qb-main-\w+, evidence \(all\) -> "
        rf"{re.escape(str(inner.evidence))}, timeout factor 3$"])
    assert header_line(r.outlines, "system") == binary_line("system", REAL["system"], "PATH")

    # the option beats the ini value
    r = inner.run("--qb-timeout-factor=2.5")
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.re_match_lines([r"qemublock: work dir .*, evidence \(failed\) -> .*, timeout factor 2\.5$"])


def test_build_dir_of_relocated_build_sets_module_dir(inner, qemu10):
    """A `dpkg -x` root: its own binaries, QEMU_MODULE_DIR pointing into it, and it works."""
    inner.suite()
    r = inner.run(f"--qemu-build-dir={qemu10}")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    root = qemu10.resolve()
    r.stdout.re_match_lines([
        rf"qemu build 'default': QEMU 10\.0\.\d+ \(QEMU_MODULE_DIR={re.escape(str(root))}/usr/lib/"
        rf"x86_64-linux-gnu/qemu\)$"])
    for spec in BINARIES:
        assert header_line(r.outlines, spec.role) == binary_line(
            spec.role, root / "usr/bin" / spec.filename, f"--qemu-build-dir {root}")


def test_two_builds_parametrize_every_test(inner, qemu10):
    v72 = link_dir(inner.path / "v72" / "usr" / "bin").parent.parent
    inner.suite()

    r = inner.run(f"--qemu-build=old={v72}", f"--qemu-build={qemu10}", "-v")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines([
        f"qemu build 'old': QEMU {_installed_version()}",
        f"  qemu-img              {v72.resolve()}/usr/bin/qemu-img  [--qemu-build old]",
        "qemu build 'qemu-10.0': QEMU 10.0.* (QEMU_MODULE_DIR=*)",
        f"  qemu-img              {qemu10.resolve()}/usr/bin/qemu-img  [--qemu-build qemu-10.0]",
    ])
    r.stdout.fnmatch_lines(["*test_suite.py::test_open_image[[]old[]] PASSED*",
                            "*test_suite.py::test_open_image[[]qemu-10.0[]] PASSED*"])


def test_help_lists_the_group_and_never_validates(inner):
    inner.ini()  # qemublock = true: start-up validation would normally run
    # --help last: pytest stops parsing the command line at --help
    r = inner.run("--qemu-img=/nonexistent", "--qemu-build-dir=/nonexistent", "--help", basetemp=False)

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert r.errlines == []
    r.stdout.fnmatch_lines(["pytest-qemublock: QEMU build under test:"])
    text = r.stdout.str()
    for spec in BINARIES:
        assert f"{spec.option}=PATH" in text
        assert re.search(rf"^  {spec.ini} \(string\):", text, re.M), spec.ini
    for option in ("--qemu-build-dir=DIR", "--qemu-build=[NAME=]DIR", "--qb-timeout-factor=F",
                   "--qb-evidence={failed,all,none}", "--qb-evidence-dir=DIR", "--qb-basetemp=DIR",
                   "--qb-keep-workdirs"):
        assert option in text, option
    assert re.search(r"^  qemublock \(bool\):", text, re.M)
    assert "does not exist" not in text

    # a single --version never loads plugins; twice, it configures them
    r = inner.run("--qemu-img=/nonexistent", "--version", "--version", basetemp=False)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines(["*registered third-party plugins:", "*pytest-qemublock-0.1.0*"])
    assert "does not exist" not in r.stdout.str() + r.stderr.str()


def test_unrelated_project_runs_without_validation(inner, monkeypatch):
    """No ini flag and no option: a broken $QEMU_IMG_PROG must not stop tests that do not need QEMU."""
    monkeypatch.setenv("QEMU_IMG_PROG", "/nonexistent")
    inner.suite("def test_plain():\n    assert 1 + 1 == 2\n")

    r = inner.run()

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([
        "qemublock: no usable QEMU build: qemu-img from $QEMU_IMG_PROG: /nonexistent does not exist"])


def _installed_version() -> str:
    import subprocess

    out = subprocess.run([REAL["system"], "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    assert m, out
    return m.group(1)


def test_work_dirs_default_to_a_roomy_tmpfs_only(tmp_path):
    from pytest_qemublock.session import default_basetemp

    assert default_basetemp(str(tmp_path / "missing")) is None
    assert default_basetemp("/") is None, "the root file system is not a tmpfs"
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    shm_is_tmpfs = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts if line)
    if shm_is_tmpfs and shutil.disk_usage("/dev/shm").free >= 1 << 30:
        assert default_basetemp() == "/dev/shm"
    else:
        assert default_basetemp() is None


INERT_CONFTEST = '''
import signal

#: SIGTERM's handler before any plugin's pytest_configure ran
BEFORE = signal.getsignal(signal.SIGTERM)
'''


def test_plugin_is_inert_until_used(inner, monkeypatch):
    """Installed in the venv but not used (no QEMU option, no ini flag, no fixture), the
    plugin reaps nothing, creates no state dir and leaves SIGTERM alone; the first
    qemublock fixture sets all of that up."""
    tmp = inner.path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    state_dir = tmp / f"qemublock-{os.getuid()}-procs"
    inner.pytester.makeconftest(INERT_CONFTEST)
    inner.suite("import signal, conftest\n\n"
                "def test_plain():\n"
                "    assert signal.getsignal(signal.SIGTERM) is conftest.BEFORE\n")

    r = inner.run(basetemp=False)

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    assert not state_dir.exists(), f"a run that never used the plugin created {state_dir}"

    # A crashed run's journal (its owner is dead) is left alone by such a run...
    state_dir.mkdir(mode=0o700)
    stale = state_dir / "4194399.procs.jsonl"
    stale.write_text('{"owner": 4194399}\n')
    r = inner.run(basetemp=False)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert stale.exists(), "a run that never used the plugin reaped an earlier run's processes"

    # ...and handled by the first run that requests a qemublock fixture.
    inner.suite("import signal, conftest\n\n"
                "def test_uses_the_plugin(qb_session):\n"
                "    assert signal.getsignal(signal.SIGTERM) is not conftest.BEFORE\n",
                name="test_uses")
    r = inner.run("test_uses.py", basetemp=False)
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    assert not stale.exists(), "the plugin, once used, did not reap the dead run's journal"
