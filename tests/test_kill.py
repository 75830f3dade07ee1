"""A SIGKILLed run leaves nothing running, the next run removes its directories, and no
other user of the machine can reach a server of a run (pytest_qemublock/host/sandbox.py,
host/leftovers.py).

Every inner run here brings up each kind of server (nginx, sshd with its ssh-agent,
tgtd, qemu-nbd over TCP and a unix socket, qemu-storage-daemon) with a QEMU connected
to each, then sleeps; the outer test SIGKILLs the inner pytest (or one xdist worker).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import running

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the sandbox needs root (setns into a new PID/network namespace); as another user "
           "a SIGKILLed run's processes are reaped by the next run's state journal instead")

#: (backend, storage) of every kind of server, and the programs that make it up
SERVERS = [("http", "ro"), ("ssh", "rw"), ("iscsi", "rw"), ("nbd-qemu-nbd-tcp", "rw"),
           ("nbd-qemu-nbd-unix", "rw"), ("nbd-qsd-tcp", "rw")]
KINDS = ("nginx", "sshd", "ssh-agent", "tgtd", "qemu-nbd", "qemu-storage-d", "qemu-system-x86")

SERVERS_SUITE = '''
import json, os, time
from pathlib import Path

import pytest

from pytest_qemublock.host.procfs import tcp_listeners
from pytest_qemublock.storage.local import qemu_socket_dir

SERVERS = {servers!r}

@pytest.mark.parametrize("n", range(int(os.environ.get("QB_KILL_TESTS", "1"))))
def test_servers_up(targets, qemu, qb_session, qb_evidence, n):
    for backend, storage in SERVERS:
        target = targets.target(backend, storage)
        vm = qemu.start(wrapper=target.wrapper)  # connects, or the test fails here
        vm.execute("blockdev-add", target.node("n0", **{{"read-only": True}}))
    qemu.start_qsd()
    eacces = targets.target("file", "eacces")
    eacces.make_writable()  # its image, writable for the unprivileged QEMU (not for all)
    qemu_socket_dir(qb_evidence.workdir / "nbd")  # where such a QEMU creates its sockets
    box = qb_session.sandbox
    info = {{"pid": os.getpid(), "token": "QB_TEST_TOKEN=" + os.environ["QB_TEST_TOKEN"],
             "root": str(qb_session.root), "sockdir": str(qb_session.sockdir),
             "pidns": box.pid_ns if box else None, "init": box.init_pid if box else None,
             "hostnet": box.outer_net if box else None,
             "tcp": [port for _, port in tcp_listeners(
                 box.members() if box else [p.pid for p in qb_session.registry.live()])]}}
    Path(os.environ["QB_MARKER"], f"up{{n}}").write_text(json.dumps(info))
    time.sleep(300)
'''


def _procs() -> dict[int, tuple[str, str, str | None, int]]:
    """pid -> (comm, command line, PID namespace, parent) of every live (not zombie) process."""
    out = {}
    token = f"QB_TEST_TOKEN={os.environ['QB_TEST_TOKEN']}".encode()  # InnerRun's
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] in ("Z", "X"):
                continue  # dead, only not reaped yet
            comm = (d / "comm").read_text().strip()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if token in (d / "environ").read_bytes().split(b"\0"):
                cmd += f" {token.decode()}"
            ns = os.readlink(d / "ns/pid")
        except OSError:
            continue
        out[int(d.name)] = (comm, cmd, ns, int(stat[1]))
    return out


def _of_run(procs: dict[int, tuple[str, str, str | None, int]], infos: list[dict],
            by_token: bool = True) -> dict[int, str]:
    """The processes of the run described by *infos*: in its PID namespaces, with its
    work dir or socket dir on their command line, or with its token in their environment."""
    keys = ("root", "sockdir", "token") if by_token else ("root", "sockdir")  # one token per run
    marks = [i[k] for i in infos for k in keys]
    nss = {i["pidns"] for i in infos} - {None}
    found = {pid for pid, (_, cmd, ns, _) in procs.items() if ns in nss or any(m in cmd for m in marks)}
    while True:  # and their descendants (sshd -i clears its environment)
        more = {pid for pid, p in procs.items() if p[3] in found} - found
        if not more:
            break
        found |= more
    return {pid: f"{pid} {procs[pid][0]}" for pid in found}


def _wait_up(inner, proc: subprocess.Popen[str], records: Path, count: int) -> list[dict]:
    deadline = time.monotonic() + 120
    while len(list(records.glob("up*"))) < count:
        if proc.poll() is not None:
            pytest.fail(f"inner run ended early ({proc.returncode}):\n{inner.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"servers never came up:\n{inner.output()}")
        time.sleep(0.1)
    time.sleep(0.2)  # the last write
    return [json.loads(f.read_text()) for f in sorted(records.glob("up*"))]


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_inner_runs():
    """An inner run left running by a failed assertion is killed (and its processes with it)."""
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _start(inner, monkeypatch, tests: int, *args: str) -> tuple[subprocess.Popen[str], list[dict]]:
    records = inner.path / "records"
    records.mkdir()
    monkeypatch.setenv("QB_MARKER", str(records))
    monkeypatch.setenv("QB_KILL_TESTS", str(tests))
    inner.suite(SERVERS_SUITE.format(servers=SERVERS))
    # eacces storage: uid 65534 must reach the images (pytester's dirs are 0700)
    inner.basetemp = Path(tempfile.mkdtemp(prefix="qbkill-", dir="/tmp"))
    inner.basetemp.chmod(0o711)
    proc = inner.popen(*args)
    _started.append(proc)
    return proc, _wait_up(inner, proc, records, tests)


def _assert_every_kind(run: dict[int, str]) -> None:
    # The scan must see each kind of server, or its emptiness afterwards proves nothing.
    comms = {v.split(" ", 1)[1] for v in run.values()}
    missing = [k for k in KINDS if not any(c.startswith(k) for c in comms)]
    assert not missing, f"the scan does not see {missing} among the run's processes {sorted(comms)}"


def _wait_gone(pids: dict[int, str], timeout: float, what: str,
               infos: list[dict]) -> tuple[list[str], float]:
    """Wait until none of *pids* runs; returns those left and how long it took.

    The sandbox's init is timed apart: it lingers until the host's pid 1 has
    reaped the zombies of the killed processes (they were children of pytest).
    """
    inits = {i.get("init") for i in infos}
    t0 = time.monotonic()
    t_others = None
    left = running(list(pids))
    while left and time.monotonic() - t0 < timeout:
        if t_others is None and not [p for p in left if p not in inits]:
            t_others = time.monotonic() - t0
        time.sleep(0.005)
        left = running(left)
    took = time.monotonic() - t0
    print(f"{what}: {len(pids)} processes gone {took:.2f}s after SIGKILL, all but the "
          f"namespace init after {t_others if t_others is not None else took:.3f}s")
    return [pids[p] for p in left], took


def _next_run_removes(inner, infos: list[dict]) -> None:
    """The next run (same base dirs) removes the dead run's directories and says so."""
    dirs = [Path(i[k]) for i in infos for k in ("root", "sockdir")]
    assert all(d.exists() for d in dirs), "nothing left to remove: the check proves nothing"
    _removed_by_next_run(inner, infos, dirs)


def _removed_by_next_run(inner, infos: list[dict], dirs: list[Path]) -> None:
    # a run that uses the plugin (it is inert otherwise): its activation sweeps
    inner.suite("def test_plain(qb_session):\n    pass\n", name="test_next")
    r = inner.run("test_next.py")
    shutil.rmtree(inner.basetemp, ignore_errors=True)
    assert r.ret == 0, r.stdout.str()
    line = next((ln for ln in r.outlines if "removed directories of dead runs" in ln), "")
    for i in infos:
        assert f"{i['root']} (pid {i['pid']} gone)" in line, r.stdout.str()
    assert [d for d in dirs if d.exists()] == []


@needs_root
def test_sigkilled_serial_run_leaves_no_process_and_next_run_removes_its_dirs(inner, monkeypatch):
    proc, infos = _start(inner, monkeypatch, 1)
    run = _of_run(_procs(), infos)
    _assert_every_kind(run)

    proc.kill()
    proc.wait(10)
    left, took = _wait_gone(run, 5.0, "serial", infos)

    assert left == [], f"still running {took:.1f}s after SIGKILL of pytest: {left}"
    assert _of_run(_procs(), infos) == {}
    _next_run_removes(inner, infos)


@needs_root
def test_sigkilled_xdist_worker_takes_its_processes_only_then_controller_takes_the_rest(
        inner, monkeypatch):
    proc, infos = _start(inner, monkeypatch, 2, "-n", "2")
    assert len({i["pid"] for i in infos}) == 2, infos  # one test per worker
    procs = _procs()
    victim = _of_run(procs, infos[:1], by_token=False)
    other = _of_run(procs, infos[1:], by_token=False)
    assert not set(victim) & set(other), "the scan cannot tell the workers' processes apart"
    _assert_every_kind(victim)
    _assert_every_kind(other)

    os.kill(infos[0]["pid"], signal.SIGKILL)
    left, took = _wait_gone(victim, 5.0, "-n 2, a worker", infos[:1])
    assert left == [], f"still running {took:.1f}s after SIGKILL of the worker: {left}"
    hit = [other[p] for p in other if p not in running(list(other))]
    assert hit == [], "the other worker's processes were hit"

    proc.kill()  # the controller
    proc.wait(10)
    left, took = _wait_gone(other, 5.0, "-n 2, then the controller", infos[1:])
    assert left == [], f"still running {took:.1f}s after SIGKILL of the controller: {left}"
    assert _of_run(_procs(), infos) == {}
    # xdist may have replaced the dead worker, and the new one removed its directories already
    left = [i for i in infos if Path(i["root"]).exists()]
    assert infos[1] in left
    _removed_by_next_run(inner, left, [Path(i[k]) for i in infos for k in ("root", "sockdir")])


@needs_root
def test_sigkilled_xdist_controller_takes_every_worker_along(inner, monkeypatch):
    proc, infos = _start(inner, monkeypatch, 2, "-n", "2")
    run = _of_run(_procs(), infos)
    workers = {i["pid"]: f"{i['pid']} worker" for i in infos}

    proc.kill()
    proc.wait(10)
    left, took = _wait_gone({**run, **workers}, 5.0, "-n 2, the controller", infos)

    assert left == [], f"still running {took:.1f}s after SIGKILL of the controller: {left}"
    _next_run_removes(inner, infos)


PROBE = '''
import os, socket, sys
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
print("net", os.readlink("/proc/self/ns/net"), "uid", os.getuid())
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        print(port, "connected")
    except OSError as e:
        print(port, type(e).__name__)
    s.close()
'''


@needs_root
def test_no_other_user_reaches_a_server_of_the_run(inner, monkeypatch):
    """As uid 65534 in the host's network (where every other user is), each TCP server
    of a run refuses, while the run's own QEMUs are connected to every one of them."""
    proc, infos = _start(inner, monkeypatch, 1)
    try:
        ports = infos[0]["tcp"]
        # nginx, sshd's activator, tgtd, qemu-nbd, qsd: each listens on one port
        assert len(ports) >= 4, f"the run has too few TCP servers to check: {ports}"
        # A Python child starts in the network we came from (host/sandbox.py).
        probe = subprocess.run([sys.executable, "-c", PROBE, *map(str, ports)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert probe.returncode == 0, probe.stderr
        lines = probe.stdout.splitlines()
        # the network the inner run came from
        assert lines[0] == f"net {infos[0]['hostnet']} uid 65534", lines[0]
        results = dict(line.split() for line in lines[1:])
        reached = [p for p, how in results.items() if how == "connected"]
        assert reached == [], f"another user connected to the run's servers on ports {reached}"
        assert set(results.values()) == {"ConnectionRefusedError"}, results
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(inner.basetemp, ignore_errors=True)


@needs_root
def test_no_world_writable_file_or_dir_in_a_run(inner, monkeypatch):
    """Files and dirs a run creates (work dir, sockets dir, evidence) are not writable by others."""
    proc, infos = _start(inner, monkeypatch, 1)
    try:
        found = subprocess.run(
            ["find", infos[0]["root"], infos[0]["sockdir"], "-perm", "-o+w", "!", "-type", "l",
             "!", "-type", "s"], capture_output=True, text=True, timeout=60, check=False).stdout.split()
        assert found == [], f"world-writable: {found}"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(inner.basetemp, ignore_errors=True)


TCP_SUITE = '''
def test_tcp_target(targets):
    targets.target("nbd-qemu-nbd-tcp", "rw")

def test_unix_target(targets):
    targets.target("nbd-qemu-nbd-unix", "rw")
'''


def test_tcp_backends_skip_without_a_sandbox(inner, monkeypatch):
    """Without a sandbox (not root, or QB_SANDBOX=off), a TCP server would be open to every
    user of the machine: TCP backends skip and say why; unix sockets (0700 dir) still run."""
    monkeypatch.setenv("QB_SANDBOX", "off")
    inner.suite(TCP_SUITE)

    r = inner.run("-rs")

    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines([
        ("qemublock: no sandbox (QB_SANDBOX=off): a SIGKILLed run's processes are only reaped by "
         "the next run (state journal); TCP backends skip"),
        ("SKIPPED * no sandbox (QB_SANDBOX=off): a TCP server would listen on the host's 127.0.0.1, "
         "where every user of the machine can connect to it")])
