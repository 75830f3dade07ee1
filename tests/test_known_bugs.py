"""The known QEMU bugs of docs/known-bugs.md still behave as documented.

Each reproducer under docs/known-bugs/ runs once per QEMU build and must print
the verdict recorded in EXPECTED. A different verdict means a build fixed (or
broke) something: update docs/known-bugs.md and EXPECTED together.

Plain subprocesses, nothing from the plugin: run it with
``pytest -p no:qemublock -q tests/test_known_bugs.py`` (the plugin may be loaded too).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "docs" / "known-bugs"
QEMU10 = Path(os.environ.get("QB_TEST_QEMU10", "/var/cache/pytest-qemublock/qemu-10.0"))
TIMEOUT = 60

#: script (without .sh) -> build -> verdict it prints. The one place to update.
EXPECTED: dict[str, dict[str, str]] = {
    "stale-open-flags": {"v7.2": "REPRODUCED", "v10.0": "REPRODUCED"},
    "stale-open-flags-reopen-ro": {"v7.2": "REPRODUCED", "v10.0": "REPRODUCED"},
    "active-commit-cancel-after-ready": {"v7.2": "REPRODUCED", "v10.0": "REPRODUCED"},
    # fixed in QEMU 9.1 by 7d99ae59a2
    "active-commit-abort-before-ready": {"v7.2": "REPRODUCED", "v10.0": "NOT REPRODUCED"},
    "reopen-empty-list": {"v7.2": "REPRODUCED", "v10.0": "REPRODUCED"},
    # 7.2 has no blockdev-set-active
    "inactive-write-aborts": {"v7.2": "NOT REPRODUCED", "v10.0": "REPRODUCED"},
    # a lead that was checked and is not a bug; guards against it becoming one
    "qemu-nbd-write-refused": {"v7.2": "NOT REPRODUCED", "v10.0": "NOT REPRODUCED"},
}
NEEDS_ROOT = {"qemu-nbd-write-refused"}  # mounts in a private mount namespace

#: iotests variable -> binary name
BINARIES = {
    "QEMU_PROG": "qemu-system-x86_64",
    "QEMU_IMG_PROG": "qemu-img",
    "QEMU_IO_PROG": "qemu-io",
    "QEMU_NBD_PROG": "qemu-nbd",
    "QSD_PROG": "qemu-storage-daemon",
}
#: build -> the version its QEMU must report (the table is about that version)
BUILD_VERSION = {"v7.2": "7.2.", "v10.0": "10.0."}
VERDICT = re.compile(r"^(REPRODUCED|NOT REPRODUCED|SETUP ERROR): ")
EXIT_CODE = {"REPRODUCED": 0, "NOT REPRODUCED": 1, "SETUP ERROR": 2}


def build_env(build: str) -> tuple[dict[str, str], str]:
    """The environment that points the scripts at ``build``, and its version line."""
    env = {k: v for k, v in os.environ.items() if k not in BINARIES and k != "QEMU_MODULE_DIR"}
    if build == "v7.2":
        paths = {var: shutil.which(name) for var, name in BINARIES.items()}
        missing = [BINARIES[var] for var, p in paths.items() if not p]
        if missing:
            pytest.skip(f"v7.2 is the QEMU on PATH; missing: {', '.join(missing)}")
    else:
        bindir = QEMU10 / "usr/bin"
        if not (bindir / "qemu-system-x86_64").is_file():
            pytest.skip(f"no QEMU 10.0 build at {QEMU10} "
                        "(scripts/fetch-qemu-build.sh, or set QB_TEST_QEMU10)")
        paths = {var: str(bindir / name) for var, name in BINARIES.items()}
        env["QEMU_MODULE_DIR"] = str(QEMU10 / "usr/lib/x86_64-linux-gnu/qemu")
    env.update({var: str(p) for var, p in paths.items()})
    version = subprocess.run([env["QEMU_PROG"], "--version"], env=env, capture_output=True,
                             text=True, timeout=TIMEOUT, check=False).stdout.splitlines()[0]
    if f"version {BUILD_VERSION[build]}" not in version:
        pytest.skip(f"{build} expects QEMU {BUILD_VERSION[build]}x, found {version!r}: "
                    f"EXPECTED says nothing about that build")
    return env, version


def marked_processes(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # Zombies have an empty environ and cmdline, so they never count.
            blob = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            cmdline = blob.split(b"\0\0", 1)[0].replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.parametrize("build", ["v7.2", "v10.0"])
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_known_bug(script: str, build: str, tmp_path: Path) -> None:
    if script in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip(f"{script}.sh needs root")
    env, version = build_env(build)
    # The script's mktemp -d lands here; every process it starts inherits TMPDIR,
    # which is how leftovers are found below.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)

    proc = subprocess.Popen(["bash", str(SCRIPTS / f"{script}.sh")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script}.sh on {build} ran over {TIMEOUT}s\n"
                    f"--- stdout ---\n{out}\n--- stderr ---\n{err}")
    transcript = f"--- stdout ---\n{out}\n--- stderr ---\n{err}"

    left = marked_processes(str(scratch))
    for line in left:  # fail, but don't leave them to the next test
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert not left, (
        f"{script}.sh on {build} left processes running:\n" + "\n".join(left) + f"\n{transcript}")
    assert not any(scratch.iterdir()), (
        f"{script}.sh on {build} left files: {list(scratch.iterdir())}\n{transcript}")

    lines = [line for line in out.splitlines() if line.strip()]
    match = VERDICT.match(lines[-1]) if lines else None
    assert match, (
        f"{script}.sh on {build} printed no verdict line last (exit {proc.returncode})\n{transcript}")
    verdict = match.group(1)
    assert proc.returncode == EXIT_CODE[verdict], (
        f"{script}.sh on {build} said {verdict} but exited {proc.returncode}\n{transcript}")
    assert verdict != "SETUP ERROR", f"{script}.sh on {build}: {lines[-1]}\n{transcript}"

    expected = EXPECTED[script][build]
    if verdict != expected:
        hint = ("fixed it?" if expected == "REPRODUCED" else "regressed?")
        pytest.fail(f"{script}.sh on {build}: expected {expected}, got: {lines[-1]}\n"
                    f"{version} {hint} update docs/known-bugs.md and EXPECTED in "
                    f"tests/test_known_bugs.py\n{transcript}")
