"""Helpers shared by the plugin's own tests (see conftest.py for the fixtures).

To find "our" QEMU processes, each inner run gets a unique token in its
environment (``QB_TEST_TOKEN``); every process the plugin spawns inherits it,
so a scan of ``/proc/*/environ`` finds exactly that run's processes (zombies
have an empty environ and so never count as alive).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_qemublock.host import procfs
from pytest_qemublock.qemu.build import BINARIES

#: pip's messages when the index cannot be reached (pip/_internal/network, urllib3, socket)
NETWORK_ERROR = re.compile(
    r"(NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|Max retries exceeded|ConnectTimeoutError"
    r"|ReadTimeoutError|Could not fetch URL)")

#: iotests-style variables and others that would leak the developer's setup
#: into inner runs (and xdist's, which would make an inner run think it is a worker).
LEAKY_ENV = tuple(b.env for b in BINARIES) + (
    "QEMU_MODULE_DIR", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID", "QB_TEST_TOKEN", "QB_MARKER",
)

#: the QEMU 10.0 build unpacked by scripts/fetch-qemu-build.sh
QEMU10_DIR = Path(os.environ.get("QB_TEST_QEMU10", "/var/cache/pytest-qemublock/qemu-10.0"))

#: the installed QEMU (Debian's 7.2), one path per role
REAL = {spec.role: shutil.which(spec.filename) for spec in BINARIES}
FILENAME = {spec.role: spec.filename for spec in BINARIES}

#: inner runs: no plugin that reorders tests
BASE_ARGS = ("-p", "no:randomly", "-p", "no:random_order")
#: where an inner run keeps its probe files (its rootdir's cache)
PROBE_DIR = ".pytest_cache/d/qemublock"

SUITE_TEST = '''
import json

def test_open_image(qemu, images):
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", json.dumps({"driver": "file", "node-name": "f0",
                                            "filename": str(img.path), "read-only": True}))
    assert vm.node_ro("f0") is True
'''


def our_processes(token: str, names: Iterable[str] = ("qemu",)) -> list[str]:
    """``pid comm`` of live processes whose environment holds *token* and whose
    command name starts with one of *names* (zombies are never listed)."""
    found = []
    needle = f"QB_TEST_TOKEN={token}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(tuple(names)):
            found.append(f"{d.name} {comm}")
    return found


def wait_gone(token: str, timeout: float, names: Iterable[str] = ("qemu",)) -> list[str]:
    """Poll until no process of *token* is left; returns what is still there."""
    deadline = time.monotonic() + timeout
    left = our_processes(token, names)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = our_processes(token, names)
    return left


def header_line(lines: list[str], role: str) -> str:
    """The report-header line of *role*'s binary (``  qemu-img   /path  [source]``)."""
    name = FILENAME[role]
    for line in lines:
        if re.match(rf"\s+{re.escape(name)}\s", line):
            return line.strip()
    raise AssertionError(f"no header line for {name} in:\n" + "\n".join(lines))


def binary_line(role: str, path: Path | str, source: str) -> str:
    """What :func:`header_line` returns for *role* at *path* from *source*."""
    return f"{FILENAME[role]:<21} {path}  [{source}]"


def link_dir(directory: Path, roles: Iterable[str] = tuple(REAL)) -> Path:
    """A directory of symlinks to the installed QEMU's binaries (a distinct path per dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    for role in roles:
        (directory / FILENAME[role]).symlink_to(REAL[role])
    return directory


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


class InnerRun:
    """One inner project: a suite-like test file, a unique work dir and token."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.path = pytester.path
        self.token = uuid.uuid4().hex
        monkeypatch.setenv("QB_TEST_TOKEN", self.token)
        self.basetemp = self.path / "qbwork"
        self.evidence = self.path / "qemublock-evidence"

    def suite(self, source: str = SUITE_TEST, name: str = "test_suite") -> Path:
        return self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def ini(self, *lines: str, qemublock: bool = True) -> Path:
        body = "\n".join((["qemublock = true"] if qemublock else []) + list(lines))
        return self.pytester.makefile(".ini", pytest=f"[pytest]\n{body}\n")

    def args(self, *args: str, basetemp: bool = True) -> list[str]:
        out = list(BASE_ARGS)
        if basetemp and not any(a.startswith("--qb-basetemp") for a in args):
            out.append(f"--qb-basetemp={self.basetemp}")
        return out + list(args)

    def run(self, *args: str, timeout: float = 120, basetemp: bool = True) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(*self.args(*args, basetemp=basetemp),
                                                  timeout=timeout)

    def run_inprocess(self, *args: str) -> pytest.RunResult:
        """A run in this process: for runs that end at start-up (bad input), where a
        subprocess's start (Python, pytest, the plugin: ~0.5 s) was most of the cost."""
        return self.pytester.runpytest_inprocess(*self.args(*args))

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start ``python -m pytest`` without waiting (for signal tests).

        SIGINT is reset to its default: a shell or CI runner may have started
        us with it ignored, and Python then never turns it into KeyboardInterrupt.
        """
        out = open(self.path / "inner.out", "w")
        proc = self.pytester.popen(
            [sys.executable, "-m", "pytest", *self.args(*args)], stdout=out,
            stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        out.close()
        return proc

    def output(self) -> str:
        return (self.path / "inner.out").read_text()

    def processes(self, names: Iterable[str] = ("qemu",)) -> list[str]:
        return our_processes(self.token, names)


def assert_no_leak(run: InnerRun, timeout: float = 5.0) -> None:
    left = wait_gone(run.token, timeout)
    assert not left, f"QEMU processes of the inner run still alive after {timeout}s: {left}"


# -- servers and storage, checked from outside (test_servers.py, test_storage.py) ----


def ss_listeners(pids: list[int]) -> list[str]:
    """``address:port`` of every TCP listener ``ss -ltnp`` attributes to one of *pids*."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & set(pids):
            found.append(line.split()[3])
    return sorted(set(found))


def host_state() -> dict[str, object]:
    """What a server must not change on the host: /run/sshd, /run/tgtd, our mounts."""
    def listing(d: str) -> list[str] | None:
        return sorted(os.listdir(d)) if os.path.isdir(d) else None
    mounts = Path("/proc/self/mountinfo").read_text()
    return {"/run/sshd": listing("/run/sshd"), "/run/tgtd": listing("/run/tgtd"),
            "mounts": len(mounts.splitlines()), "qemublock-run mounts": mounts.count("qemublock-run")}


def running(pids: list[int]) -> list[int]:
    """Those of *pids* that still exist and are not zombies."""
    return [pid for pid in pids if procfs.running(pid)]


def assert_only_loopback(name: str, pids: list[int], port: int) -> None:
    listeners = ss_listeners(pids)
    assert listeners == [f"127.0.0.1:{port}"], (
        f"{name} (pids {pids}) listens on {listeners}; expected only 127.0.0.1:{port} "
        f"(no 0.0.0.0 / [::] / * listener)")


def leftovers(host: Any, pids: Iterable[int]) -> list[str]:
    """``pid comm`` of those of *pids* that ``ps`` (testinfra's *host*) still shows alive."""
    wanted = set(pids)
    return [f"{p.pid} {p.comm}" for p in host.process.filter()
            if p.pid in wanted and not str(p.stat).startswith("Z")]


def assert_gone(name: str, pids: list[int], before: dict[str, object], host: Any,
                port: int | None = None) -> None:
    """After a stop: none of *pids* left (seen by ``ps``), nothing listening on
    127.0.0.1:*port*, no mount or /run directory left behind."""
    deadline = time.monotonic() + 5
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = leftovers(host, pids)
    assert left == [], f"{name}: processes {left} still run after stop"
    if port is not None:
        assert not host.socket(f"tcp://127.0.0.1:{port}").is_listening, (
            f"{name}: something still listens on 127.0.0.1:{port} after stop")
    assert host_state() == before, f"{name} changed the host: {host_state()} (before: {before})"
