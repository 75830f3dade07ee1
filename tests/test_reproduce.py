"""The reproducers the plugin writes (reproduce.sh in a case's evidence) replay QEMU's behaviour.

The suites' known-bug cases (their xfails) run once on both builds with the evidence
in a temp dir; each generated ``reproduce.sh`` then runs with plain ``bash`` and must
say ``REPRODUCED`` (exit 0) on its own build, and a bug fixed in a later build must
come out ``NOT REPRODUCED`` (exit 1) there. A failing case of an inner run gets one
too, on both storages that refuse writes. Nothing a script started may outlive it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from helpers import QEMU10_DIR

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
#: every known-bug case of the suites (docs/known-bugs.md), per build
KNOWN_BUG_CASES = {
    "suites/test_dynamic.py::test_dynamic[{b}-file-rw-raw-reopen-aro-on-under-export]":
        "stale-open-flags-writer",
    "suites/test_dynamic.py::test_dynamic[{b}-file-rw-raw-reopen-aro-on-under-scsi-hd]":
        "stale-open-flags-writer",
    "suites/test_reopen.py::test_reopen_read_only_after_unchanged_reopen"
    "[{b}-file-rw-proto-ro_off-aro_off-same_options_then_ro]": "stale-open-flags-reopen-ro",
    "suites/test_reopen.py::test_reopen_of_nothing_is_answered[{b}]": "empty-reopen-aborts",
    "suites/test_jobs.py::test_job[{b}-file-rw-chain-active-commit-cancel]":
        "active-commit-soft-cancel-keeps-base-rw",
    **{f"suites/test_open.py::test_read_only_export_message[{{b}}-nbd-{server}-unix-ro-proto-qmp-"
       "ro_off-aro_off-export_message]": "nbd-ro-export-message-lost"
       for server in ("qemu-nbd", "qsd", "nbdkit", "qemu-export")},
}
#: cases whose bug only one build has
ONLY = {
    "suites/test_jobs.py::test_job[{b}-file-rw-chain-active-commit-cancel-early]":
        ("v7.2", "active-commit-abort-keeps-base-rw"),
    "suites/test_inactive.py::test_inactive_node[{b}-file-rw-qcow2-hmp-qemu-io-write]":
        ("v10.0", "inactive-write-aborts"),
}
SELECT = ("reopen-aro-on-under or same_options_then_ro or reopen_of_nothing or active-commit-cancel "
          "or export_message or hmp-qemu-io-write")
BUILD_ENV = {  # iotests variables and the data dirs that point a script at the other build
    "QEMU_PROG": "usr/bin/qemu-system-x86_64", "QEMU_IMG_PROG": "usr/bin/qemu-img",
    "QEMU_IO_PROG": "usr/bin/qemu-io", "QEMU_NBD_PROG": "usr/bin/qemu-nbd",
    "QSD_PROG": "usr/bin/qemu-storage-daemon", "QEMU_DATA_DIR": "usr/share/qemu",
    "QEMU_MODULE_DIR": "usr/lib/x86_64-linux-gnu/qemu",
}


def expected_cases() -> dict[str, str]:
    out = {case.format(b=b): bug for case, bug in KNOWN_BUG_CASES.items() for b in ("v7.2", "v10.0")}
    out.update({case.format(b=b): bug for case, (b, bug) in ONLY.items()})
    return out


def evidence_name(nodeid: str) -> str:
    # evidence.safe_name, restated: the test must not trust the code it checks
    return re.sub(r"[^A-Za-z0-9_.\-\[\]=]+", "_", nodeid.replace("::", "__")).strip("_")[:120]


def run_script(script: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``bash reproduce.sh`` with its temp dir in a TMPDIR of its own; fails if anything it
    started survives it or its temp dir stays behind."""
    # world-searchable (0711): an eacces QEMU runs as uid 65534 (pytest's tmp_path is 0700)
    tmp = Path(tempfile.mkdtemp(prefix="qbrepro-", dir="/tmp"))
    try:
        tmp.chmod(0o711)
        full = {**os.environ, "TMPDIR": str(tmp), **(env or {})}
        res = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True,
                             timeout=TIMEOUT, env=full, start_new_session=True)
        deadline = time.monotonic() + 5
        while (left := survivors(tmp)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"{script.parent.name}: still running after the script: {left}"
        assert not list(tmp.iterdir()), f"{script.parent.name} left {list(tmp.iterdir())}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def survivors(tmp: Path) -> list[str]:
    """Processes whose command line names the scripts' temp dir (QEMU, servers, the client)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(tmp) in cmdline:
            out.append(f"{p.info['pid']} {cmdline[:200]}")
    return out


def verdict(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stdout.strip().splitlines()
    return lines[-1] if lines else f"(no output; stderr: {res.stderr.strip()[-500:]})"


@pytest.fixture(scope="module")
def known_bug_evidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suites' known-bug cases run once on both builds, their evidence kept."""
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR}")
    evidence = tmp_path_factory.mktemp("evidence")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rx",
         "--qemu-build", "v7.2=/", "--qemu-build", f"v10.0={QEMU10_DIR}", "--qb-no-summary",
         "--qb-evidence-dir", str(evidence), "-k", SELECT],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    xfailed = set(re.findall(r"^XFAIL (\S+)", res.stdout, re.M))
    assert xfailed == set(expected_cases()), res.stdout[-3000:]
    return evidence


@pytest.mark.parametrize("case", sorted(expected_cases()))
def test_known_bug_reproducer_reproduces(case: str, known_bug_evidence: Path) -> None:
    script = known_bug_evidence / evidence_name(case) / "reproduce.sh"
    text = script.read_text()
    bug = expected_cases()[case]
    assert f"# outcome: xfailed: {bug}: " in text
    assert f"# known QEMU bug {bug}: " in text and "# expected: " in text and "# because:  " in text
    assert "# observed: " in text
    assert "/dev/shm/" not in text.split("REPLAY_CLIENT_EOF")[-1], "a run path left in the replay"
    res = run_script(script)
    assert res.returncode == 0 and verdict(res).startswith("REPRODUCED: "), res.stdout[-4000:] + res.stderr


def test_fixed_bug_is_not_reproduced_on_the_fixed_build(known_bug_evidence: Path) -> None:
    """7.2's reproducer of the active-commit abort (fixed in 9.1 by 7d99ae59a2), on 10.0."""
    case = "suites/test_jobs.py::test_job[v7.2-file-rw-chain-active-commit-cancel-early]"
    script = known_bug_evidence / evidence_name(case) / "reproduce.sh"
    env = {var: str(QEMU10_DIR / rel) for var, rel in BUILD_ENV.items()}
    res = run_script(script, env)
    assert res.returncode == 1, res.stdout[-4000:] + res.stderr
    assert verdict(res).startswith("NOT REPRODUCED: "), res.stdout[-4000:]
    assert "base-fmt=true" in verdict(res) and "fds on " in verdict(res)


FAILING_SUITE = '''
import pytest
from pytest_qemublock.scenario import drive, outcome


@pytest.mark.parametrize("storage", ["erofs", "eacces"])
def test_wrong_expectation(storage, targets, qemu, qemu_build):
    target = targets.target("file", storage, "qcow2")
    opts = {"driver": "qcow2", "node-name": "n0", "file": target.node("p0")}
    got = drive.open_node(qemu, "blockdev", opts, target)
    exp = outcome.Expect(ok=True, ro={"n0": False}, because="deliberately wrong: the storage refuses writes")
    outcome.check(exp, got, what=f"open on {storage}", build=qemu_build.name)
'''


@pytest.mark.parametrize("storage", ["erofs", "eacces"])
def test_failing_case_gets_a_reproducer(inner, storage: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("root's storage set-up (mount namespace, uid 65534) is what is replayed")
    inner.suite(FAILING_SUITE)
    # eacces storage: uid 65534 must reach the images (pytester's dirs are 0700)
    inner.basetemp = Path(tempfile.mkdtemp(prefix="qbrepro-", dir="/tmp"))
    inner.basetemp.chmod(0o711)
    try:
        r = inner.run("-k", storage)
    finally:
        shutil.rmtree(inner.basetemp, ignore_errors=True)
    r.assert_outcomes(failed=1)
    script = inner.evidence / f"test_suite.py__test_wrong_expectation[{storage}]" / "reproduce.sh"
    text = script.read_text()
    assert "# outcome: failed (call): AssertionError: " in text
    assert "# expected: succeeds, then n0.ro=False" in text
    assert "# because:  deliberately wrong: the storage refuses writes" in text
    if storage == "erofs":
        assert "unshare --mount --propagation private" in text and "mount -o remount,bind,ro" in text
    else:
        assert "chmod 0444 " in text and "setpriv --reuid=65534" in text
    res = run_script(script)
    assert res.returncode == 0 and verdict(res).startswith(f"REPRODUCED: open on {storage}: failed"), \
        res.stdout[-4000:] + res.stderr

    # QEMU doing something else than in the run is told apart (here: the run's record edited)
    changed = tmp_path / "changed.sh"
    changed.write_text(text.replace(": Read-only file system'", ": something else'")
                       .replace(": Permission denied'", ": something else'"))
    res = run_script(changed)
    assert res.returncode == 1 and verdict(res).startswith("NOT REPRODUCED: qemu: how it ended: now "), \
        res.stdout[-4000:]
