"""Bad input: exactly one clear line on stderr, exit code 4, no traceback.

And one input that looks bad but is fine: a work dir with spaces and commas.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import REAL, link_dir, write_script
from pytest_qemublock.session import RUN_NEEDS

Setup = Callable[[Path, pytest.MonkeyPatch], list[str]]


def _old_qemu(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    fake = write_script(p / "old" / "qemu-system-x86_64", """
        echo "QEMU emulator version 2.12.0"
        echo "Copyright (c) 2003-2017 Fabrice Bellard and the QEMU Project developers"
    """)
    return [f"--qemu-system={fake}"]


def _not_executable(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    f = p / "noexec" / "qemu-img"
    f.parent.mkdir()
    f.write_bytes(Path(REAL["img"]).read_bytes()[:4096])
    f.chmod(0o644)
    return [f"--qemu-img={f}"]


def _crashing(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    fake = write_script(p / "crash" / "qemu-img", "kill -SEGV $$\n")
    return [f"--qemu-img={fake}"]


def _no_system_in_dir(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    d = link_dir(p / "partial", ("img", "io"))
    return [f"--qemu-build-dir={d}"]


def _build_dir_file(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    f = p / "a-file"
    f.write_text("not a directory\n")
    return [f"--qemu-build-dir={f}"]


def _dupe_dirnames(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    a = link_dir(p / "a" / "qemu")
    b = link_dir(p / "b" / "qemu")
    return [f"--qemu-build={a}", f"--qemu-build={b}"]


def _dupe_names(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    a = link_dir(p / "a" / "one")
    b = link_dir(p / "b" / "two")
    return [f"--qemu-build=x={a}", f"--qemu-build=x={b}"]


def _bad_build_name(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    a = link_dir(p / "a" / "one")
    return [f"--qemu-build=my build={a}"]


def _env_missing(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setenv("QEMU_IMG_PROG", "/nonexistent/qemu-img")
    return []


def _ini_missing(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (p / "pytest.ini").write_text("[pytest]\nqemublock = true\nqemu_io = /nonexistent/qemu-io\n")
    return []


def _ini_factor(value: str) -> Setup:
    def setup(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
        (p / "pytest.ini").write_text(f"[pytest]\nqemublock = true\nqb_timeout_factor = {value}\n")
        return []
    return setup


def _evidence_below_a_file(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (p / "a-file").write_text("")
    return [f"--qb-evidence-dir={p}/a-file/evidence"]


def _default_evidence_dir_is_a_file(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    # as a user in root's checkout: the default evidence dir cannot be made or written
    (p / "qemublock-evidence").write_text("")
    return []


def _img_not_on_path(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
    (p / "empty").mkdir()
    mp.setenv("PATH", str(p / "empty"))
    return [f"--qemu-system={REAL['system']}"]


def _state_dir(make: Callable[[Path], None]) -> Setup:
    """A state dir (``$TMPDIR/qemublock-<uid>-procs``) that another user could use
    against the run: it must be refused, never trusted."""
    def setup(p: Path, mp: pytest.MonkeyPatch) -> list[str]:
        tmp = p / "tmp"
        tmp.mkdir()
        mp.setenv("TMPDIR", str(tmp))
        make(tmp / f"qemublock-{os.getuid()}-procs")
        return []
    return setup


def _world_writable(d: Path) -> None:
    d.mkdir()
    os.chmod(d, 0o1777)


def _symlinked(d: Path) -> None:
    (d.parent / "elsewhere").mkdir(mode=0o700)
    d.symlink_to(d.parent / "elsewhere")


def _of_another_user(d: Path) -> None:
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)


_STATE = r"state directory {p}/tmp/qemublock-\d+-procs "
_AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another uid")


# (id, setup, the one expected stderr line as a regex; "{p}" is the inner project dir)
CASES: list[tuple[str, Setup | list[str], str]] = [
    ("missing-binary", ["--qemu-img=/nonexistent"],
     r"qemu-img from option --qemu-img: /nonexistent does not exist"),
    ("bin-true", ["--qemu-system=/bin/true"],
     r"qemu-system-x86_64 from option --qemu-system: /bin/true is not a QEMU binary "
     r"\(`true --version` printed 'true \(GNU coreutils\) [\d.]+', exit 0\)"),
    ("bin-ls", ["--qemu-system=/bin/ls"],
     r"qemu-system-x86_64 from option --qemu-system: /bin/ls is not a QEMU binary "
     r"\(`ls --version` printed 'ls \(GNU coreutils\) [\d.]+', exit 0\)"),
    ("optional-binary-checked-too", ["--qemu-nbd=/bin/true"],
     r"qemu-nbd from option --qemu-nbd: /bin/true is not a QEMU binary .*"),
    ("crashing-binary", _crashing,
     r"qemu-img from option --qemu-img: {p}/crash/qemu-img is not a QEMU binary "
     r"\(`qemu-img --version` printed '\(nothing\)', exit -11\)"),
    ("directory-as-binary", ["--qemu-img=/tmp"],
     r"qemu-img from option --qemu-img: /tmp is a directory, not a program"),
    ("not-executable", _not_executable,
     r"qemu-img from option --qemu-img: {p}/noexec/qemu-img is not executable"),
    ("too-old", _old_qemu,
     r"{p}/old/qemu-system-x86_64 is QEMU 2\.12\.0: too old, auto-read-only needs QEMU 3\.1 or newer"),
    ("build-dir-nonexistent", ["--qemu-build-dir=/nonexistent/build"],
     r"QEMU build directory '/nonexistent/build' does not exist"),
    ("build-dir-without-system", _no_system_in_dir,
     r"QEMU build directory '{p}/partial' is unusable: no qemu-system-x86_64 or qemu-system-aarch64 "
     r"\(looked at {p}/partial/qemu-system-\*, {p}/partial/storage-daemon/qemu-system-\*, "
     r"{p}/partial/usr/bin/qemu-system-\*, {p}/partial/bin/qemu-system-\*\); "
     r"build QEMU there first or pass the right directory"),
    ("build-dir-is-a-file", _build_dir_file,
     r"QEMU build directory '{p}/a-file' is not a directory"),
    ("named-build-nonexistent", ["--qemu-build=/nonexistent/qemu-9.2"],
     r"QEMU build directory '/nonexistent/qemu-9.2' does not exist"),
    ("duplicate-dir-names", _dupe_dirnames,
     r"--qemu-build names must be unique; repeated: qemu \(use NAME=DIR to name them\)"),
    ("duplicate-names", _dupe_names,
     r"--qemu-build names must be unique; repeated: x \(use NAME=DIR to name them\)"),
    ("bad-build-name", _bad_build_name,
     r"--qemu-build 'my build={p}/a/one': the build name 'my build' may only use letters, "
     r"digits and \._\+-"),
    ("build-without-name", ["--qemu-build=/"],
     r"--qemu-build '/': '/' has no name to call the build by; use NAME=/"),
    ("build-without-dir", ["--qemu-build=a="],
     r"--qemu-build 'a=': no directory after 'a='"),
    *[(f"timeout-factor-{v}", [f"--qb-timeout-factor={v}"],
       rf"--qb-timeout-factor={re.escape(v)}: the timeout factor must be a finite number > 0")
      for v in ("0", "-1", "nan", "inf")],
    ("ini-timeout-factor-zero", _ini_factor("0"),
     r"ini qb_timeout_factor = 0: the timeout factor must be a finite number > 0"),
    ("ini-timeout-factor-text", _ini_factor("fast"),
     r"ini qb_timeout_factor = fast: not a number"),
    ("evidence-dir-unwritable", _evidence_below_a_file,
     r"--qb-evidence-dir={p}/a-file/evidence: cannot write there: Not a directory"),
    ("default-evidence-dir-unwritable", _default_evidence_dir_is_a_file,
     r"--qb-evidence-dir={p}/qemublock-evidence: cannot write there: File exists; "
     r"pass --qb-evidence-dir DIR \(a directory you can write\)"),
    ("env-var-names-its-source", _env_missing,
     r"qemu-img from \$QEMU_IMG_PROG: /nonexistent/qemu-img does not exist"),
    ("ini-names-its-source", _ini_missing,
     r"qemu-io from ini qemu_io: /nonexistent/qemu-io does not exist"),
    ("state-dir-world-writable", _state_dir(_world_writable),
     _STATE + r"has mode 1777, not 0700: refused \(another user could plant or read journals "
     r"there; remove it, or set TMPDIR\)"),
    ("state-dir-symlink", _state_dir(_symlinked),
     _STATE + r"is a symlink: refused \(remove it, or set TMPDIR to a directory of your own\)"),
    pytest.param("state-dir-of-another-user", _state_dir(_of_another_user),
                 _STATE + r"is owned by uid 65534, not 0: refused .*", marks=_AS_ROOT),
    ("backend-matches-nothing", ["--backend=nbd-qemu-nbd-unxi"],
     r"--backend nbd-qemu-nbd-unxi: matches nothing; valid: file \(rw/erofs/eacces\), "
     r"nbd-qemu-nbd-unix \(rw/ro\), .*, iscsi \(rw/ro\)"),
    ("one-of-two-backends-matches-nothing", ["--backend=file-erofs,nbd-qsd-unx"],
     r"--backend nbd-qsd-unx: matches nothing; valid: file \(rw/erofs/eacces\), .*"),
    ("storage-the-backend-lacks", ["--backend=http-rw"],
     r"--backend http-rw: matches nothing; valid: .*, http \(ro\), .*"),
    ("format-matches-nothing", ["--format=qcow3"],
     r"--format qcow3: matches nothing; valid: raw, qcow2, chain, proto"),
    ("interface-matches-nothing", ["--interface=blkdev"],
     r"--interface blkdev: matches nothing; valid: blockdev, drive, qmp, qsd"),
    ("required-binary-not-found", _img_not_on_path,
     r"qemu-img not found on PATH \(install Debian package qemu-utils, or pass --qemu-img / "
     r"set QEMU_IMG_PROG\)"),
]


def _param(case: object) -> object:
    if hasattr(case, "marks"):  # a pytest.param(id, setup, expected, marks=...)
        values = case.values  # type: ignore[attr-defined]
        return pytest.param(values[1], values[2], id=values[0], marks=case.marks)  # type: ignore[attr-defined]
    i, s, e = case  # type: ignore[misc]
    return pytest.param(s, e, id=i)


@pytest.mark.parametrize("setup, expected", [_param(c) for c in CASES])
def test_bad_input_is_one_line_usage_error(inner, monkeypatch, setup, expected):
    if not (inner.path / "pytest.ini").exists():
        inner.ini()  # qemublock = true: validate at start-up even without options
    tmpdir = os.environ.get("TMPDIR")
    args = setup(inner.path, monkeypatch) if callable(setup) else setup
    inner.suite()

    # In this process, but not with a TMPDIR of its own: tempfile keeps the first one per process
    fresh = os.environ.get("TMPDIR") != tmpdir
    r = inner.run(*args) if fresh else inner.run_inprocess(*args)

    out, err = r.stdout.str(), r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, out + err
    lines = [line for line in r.errlines if line.strip()]
    pattern = "ERROR: qemublock: " + expected.replace("{p}", re.escape(str(inner.path)))
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert re.fullmatch(pattern, lines[0]), f"\n{lines[0]}\n!~\n{pattern}"
    assert "Traceback" not in out + err and "INTERNALERROR" not in out + err
    # nothing ran, nothing was created
    assert "collected" not in out
    assert not inner.basetemp.exists()


def test_lazy_validation_exits_with_usage_error_at_first_use(inner, monkeypatch):
    """Without start-up validation the first test needing QEMU stops the run, cleanly."""
    monkeypatch.setenv("QEMU_IMG_PROG", "/nonexistent/qemu-img")
    inner.suite()

    r = inner.run()

    out = r.stdout.str() + r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, out
    r.stdout.fnmatch_lines(["*Exit: qemublock: qemu-img from $QEMU_IMG_PROG: "
                            "/nonexistent/qemu-img does not exist*"])
    assert "Traceback" not in out and "INTERNALERROR" not in out


WEIRD_DIR_TEST = r'''
import json

def test_images_in_a_weird_dir(qemu, images, qemu_tools):
    img = images.from_recipe("qcow2")
    assert "x y,z" in str(img.path), img.path
    blockdev = {"driver": "qcow2", "node-name": "q0", "read-only": True,
                "file": {"driver": "file", "filename": str(img.path)}}
    drive = f"if=none,id=d1,format=qcow2,readonly=on,file={str(img.path).replace(',', ',,')}"
    vm = qemu.start("-blockdev", json.dumps(blockdev), "-drive", drive)
    assert vm.nodes()["q0"]["file"] == str(img.path)
    [d1] = [b for b in vm.execute("query-block") if b["device"] == "d1"]
    assert d1["inserted"]["file"] == str(img.path)
    assert qemu_tools.info(img.path)["format"] == "qcow2"
    assert images.verify(img, img.patterns[0])
'''


def test_work_dir_with_spaces_and_commas_works(inner):
    weird = inner.path / "x y,z"
    inner.suite(WEIRD_DIR_TEST)

    r = inner.run(f"--qb-basetemp={weird}", "--qb-evidence=all")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    r.stdout.re_match_lines([rf"qemublock: work dir {re.escape(str(weird))}/qb-main-\w+, .*"])
    kept = inner.evidence / "test_suite.py__test_images_in_a_weird_dir"
    commands = (kept / "commands.txt").read_text()
    assert str(weird) in commands  # the command line really used that directory
    assert os.listdir(weird) == []  # and the run cleaned up after itself


_MOUNT_TMPFS = 'mount -t tmpfs -o size="$1" none "$2" && shift 2 && exec "$@"'


def _in_private_tmpfs(inner, size: str, mnt: Path, fill: str | None, *args: str) -> pytest.RunResult:
    """Run the inner pytest with a fresh tmpfs of *size* at *mnt*, in a mount namespace of
    its own (nothing to unmount, nothing seen outside), after filling it with *fill*."""
    mnt.mkdir()
    cmd = [sys.executable, "-m", "pytest", *inner.args(f"--qb-basetemp={mnt}/work", *args)]
    if fill:
        cmd = ["sh", "-c", 'fallocate -l "$1" "$2" && shift 2 && exec "$@"', "sh", fill,
               str(mnt / "filler"), *cmd]
    return inner.pytester.run("unshare", "-m", "sh", "-c", _MOUNT_TMPFS, "sh", size, str(mnt),
                              *cmd, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mounting a small tmpfs in a private mount namespace needs root "
                           "and unshare (util-linux)")
def test_nearly_full_work_dir_file_system_is_refused(inner):
    """Instead of an ENOSPC traceback per case: one line at start-up, with the figures."""
    needs = RUN_NEEDS >> 20
    inner.ini()
    inner.suite("def test_plain(qb_session):\n    pass\n")
    mnt = inner.path / "small"

    r = _in_private_tmpfs(inner, f"{needs + 8}m", mnt, f"{needs}m")

    out, err = r.stdout.str(), r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, out + err
    lines = [line for line in r.errlines if line.strip()]
    assert lines == [f"ERROR: qemublock: --qb-basetemp={mnt}/work: its file system has 8 MiB free, "
                     f"a run needs about {needs} MiB (free some space, or pass --qb-basetemp "
                     f"a directory on a roomier file system)"], out + err
    assert "Traceback" not in out + err and "collected" not in out


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mounting a tmpfs in a private mount namespace needs root and unshare")
def test_work_dir_file_system_with_room_is_accepted(inner):
    """The threshold is what a run needs, no more: a file system with that much free is used."""
    needs = RUN_NEEDS >> 20
    inner.ini()
    inner.suite("def test_plain(qb_session):\n    pass\n")

    r = _in_private_tmpfs(inner, f"{needs + 16}m", inner.path / "roomy", "8m")  # just enough

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)


def _python_child_network() -> str:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.readlink('/proc/self/ns/net'))"],
                           stdout=subprocess.PIPE, text=True, timeout=60, check=True)
    return child.stdout.strip()


def test_python_children_reach_the_host_network_after_an_in_process_run(inner):
    """An in-process run that stops at start-up (bad input) nests a sandbox of its own;
    afterwards a Python child of this process (pip in test_wheel.py) must still start in
    the host's network, not in a sandbox's loopback-only one (it found no package index)."""
    inner.ini()
    inner.suite()
    before = _python_child_network()

    inner.run_inprocess("--qemu-img=/nonexistent/qemu-img")  # refused after the sandbox is made

    assert _python_child_network() == before
