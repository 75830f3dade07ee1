"""The servers behind the http, ssh and iscsi backends, checked from the outside.

For nginx, sshd and tgtd: each starts and is ready; it listens on 127.0.0.1
only (``ss -ltnp`` shows no wildcard listener for any of its processes); its
read-only variant refuses a write sent through the protocol itself, as root,
while the writable one accepts the same write (so the refusal check can
fail); and after stop no process of it is left, nothing appeared in
/run/sshd or /run/tgtd and no mount is left behind. The port guards are
forced to act: a port taken by someone else is retried (tgtd), and tgtd's
silent fallback to 0.0.0.0:3260 is caught and killed.

These run in this (outer) session with the plugin's own fixtures: real
servers, real QEMU tools, nothing mocked. A missing package skips with the
package's name.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from helpers import assert_gone, assert_only_loopback, host_state, ss_listeners
from iscsi_wire import scsi_write
from pytest_qemublock.backends import http, iscsi, ssh
from pytest_qemublock.backends.server import ServerError
from pytest_qemublock.host import procfs
from pytest_qemublock.host.listeners import PortReservation
from pytest_qemublock.storage.images import ImageFactory

ROOT = os.geteuid() == 0
needs_nginx = pytest.mark.skipif(http.nginx_binary() is None,
                                 reason=f"nginx is not installed (Debian package {http.NGINX_PACKAGE})")
needs_sshd = pytest.mark.skipif(bool(ssh.missing_tools()) or not ROOT,
                                reason=f"needs root and {', '.join(ssh.missing_tools()) or 'sshd'} "
                                       f"(Debian packages {ssh.SSH_PACKAGE}, openssh-client)")
needs_tgtd = pytest.mark.skipif(bool(iscsi.missing_tools()) or not ROOT,
                                reason=f"needs root and {', '.join(iscsi.missing_tools()) or 'tgtd'} "
                                       f"(Debian package {iscsi.TGT_PACKAGE})")
needs_ss = pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v ss"], capture_output=True,
                                             check=False).returncode,
                              reason="ss is not installed (Debian package iproute2)")

WRITE = b"\x77" * 512


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def ctx(targets):
    """The ServerContext the backends use (registry, evidence, timeouts, socket dir)."""
    return targets.server_ctx


@pytest.fixture
def image(targets, qemu_tools):
    """The raw recipe image (1 MiB, 0x5a in the first 64k) on plain writable storage."""
    return ImageFactory(qemu_tools, targets.storage("rw").directory).from_recipe("raw")


def qemu_io(tools, spec: str, command: str, env: dict[str, str] | None = None, readonly=False):
    prefix = ("env", *(f"{k}={v}" for k, v in (env or {}).items())) if env else ()
    args = (["-r"] if readonly else []) + ["--image-opts", "-c", command, spec]
    res = tools.run("io", *args, check=False, prefix=prefix)
    return res.returncode, (res.stdout + res.stderr).strip()


def image_opts(opts: dict, prefix: str = "") -> str:
    out = []
    for k, v in opts.items():
        if isinstance(v, dict):
            out.append(image_opts(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}={str(v).replace(',', ',,')}")
    return ",".join(out)


# -- nginx ----------------------------------------------------------------------------


@needs_nginx
@needs_ss
def test_nginx_serves_read_only_on_loopback_and_leaves_nothing(ctx, image, qemu_tools, host):
    before = host_state()
    server = http.start_nginx(ctx, image.path.parent, image.path)
    pids = procfs.group_pids(server.proc.pid)  # master and worker
    try:
        assert len(pids) >= 2, f"nginx: expected a master and a worker, found {pids}"
        assert_only_loopback("nginx", pids, server.port)
        spec = image_opts(server.blockdev_options(image.path))
        rc, out = qemu_io(qemu_tools, spec, "read -P 0x5a 0 64k", readonly=True)
        assert rc == 0 and "read 65536/65536" in out, f"qemu-io read over http: {out}"
        # HTTP itself: nginx refuses methods that would change the file
        for method in ("PUT", "DELETE"):
            status = http.http_status(server.port, "/" + image.path.name, 5, method=method)
            assert " 405 " in status, f"{method} {server.url(image.path)}: {status!r}, expected 405"
        rc, out = qemu_io(qemu_tools, spec, "write -P 0x77 0 512")
        assert rc != 0 and "curl driver does not support writes" in out, out
        assert image.unchanged(), f"{image.path} changed behind nginx"
    finally:
        server.stop()
    assert_gone("nginx", pids, before, host, port=server.port)
    pidfiles = list(ctx.evidence.workdir.glob("nginx*/nginx.pid"))
    assert pidfiles == [], f"nginx left {pidfiles}"


@needs_nginx
def test_nginx_that_cannot_serve_fails_fast_with_its_error(ctx, image):
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"HEAD /nonexistent.img answered .*404"):
        http.start_nginx(ctx, image.path.parent, image.path.parent / "nonexistent.img")
    assert time.monotonic() - start < 5
    assert ctx.registry.live() == [], "the refused nginx was not stopped"


# -- sshd -----------------------------------------------------------------------------


@needs_sshd
@needs_ss
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_sshd_on_loopback_refuses_writes_read_only_and_leaves_nothing(ctx, image, qemu_tools, readonly,
                                                                     host):
    before = host_state()
    server = ssh.start_sshd(ctx, readonly=readonly)
    try:
        assert_only_loopback("sshd", server.namespace.pids(), server.port)
        assert ss_listeners([server.agent.pid]) == [], "ssh-agent must not listen on TCP"
        spec = image_opts(server.blockdev_options(image.path))
        env = dict(server.wrapper.env)
        rc, out = qemu_io(qemu_tools, spec, "read -P 0x5a 0 64k", env, readonly=True)
        assert rc == 0 and "read 65536/65536" in out, f"qemu-io read over ssh: {out}"
        rc, out = qemu_io(qemu_tools, spec, "write -P 0x77 0 512", env)
        if readonly:
            assert rc != 0 and "SFTP server: Permission denied" in out, (
                f"write over sftp to internal-sftp -R as {server.user}: {out}")
            assert image.unchanged(), f"{image.path} changed behind internal-sftp -R"
        else:
            assert rc == 0 and "wrote 512/512" in out, f"write over sftp: {out}"
            assert image.path.read_bytes()[:512] == WRITE, "the write did not reach the file"
        # A connection in progress at stop: its own sshd -i (a child of
        # systemd-socket-activate) must end with the server too.
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(b"SSH-2.0-qemublock_test\r\n")
        assert conn.recv(8) == b"SSH-2.0-"
        deadline = time.monotonic() + 5
        while len(server.namespace.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = server.namespace.pids() + [server.agent.pid]
        assert len(pids) >= 3, f"expected the activator, a connection's sshd and the agent: {pids}"
    finally:
        server.stop()
    conn.close()
    assert_gone("sshd", pids, before, host, port=server.port)
    assert not server.agent_sock.exists(), f"{server.agent_sock} left behind"


@needs_sshd
def test_sshd_that_cannot_serve_fails_fast_with_its_error(ctx, monkeypatch):
    # sshd -i starts per connection: a broken configuration shows up on the
    # readiness connection, with sshd's own words, not as a later QEMU error.
    monkeypatch.setattr(ssh, "_config", lambda keys, readonly: "HostKey /nonexistent/key\n")
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"(?s)no SSH-2.0 banner.*no hostkeys available"):
        ssh.start_sshd(ctx, readonly=True)
    assert time.monotonic() - start < 5
    assert ctx.registry.live() == [], "the refused sshd (or its agent) was not stopped"


# -- tgtd -----------------------------------------------------------------------------


@needs_tgtd
@needs_ss
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_tgtd_on_loopback_refuses_writes_read_only_and_leaves_nothing(ctx, image, qemu_tools, readonly,
                                                                     host):
    before = host_state()
    server = iscsi.start_tgtd(ctx, image.path, readonly=readonly)
    pids = server.namespace.pids()
    try:
        assert (server.namespace.path(f"/run/tgtd/socket.{server.control}")).is_socket()
        assert_only_loopback("tgtd", pids, server.port)
        spec = image_opts(server.blockdev_options())
        rc, out = qemu_io(qemu_tools, spec, "read -P 0x5a 0 64k", readonly=True)
        assert rc == 0 and "read 65536/65536" in out, f"qemu-io read over iscsi: {out}"
        # A SCSI WRITE on the wire, as root: QEMU would not even send one to a
        # write-protected LUN.
        result = scsi_write(server.portal, server.iqn, server.lun, 0, WRITE)
        if readonly:
            assert (result.status, result.sense_key, result.asc) == (0x02, 0x7, 0x27), (
                f"WRITE(10) to the readonly=1 LUN: {result.describe()}, expected CHECK CONDITION, "
                f"DATA PROTECT, WRITE PROTECTED (0x27)")
            assert image.unchanged(), f"{image.path} changed behind the write-protected LUN"
            rc, out = qemu_io(qemu_tools, spec, "write -P 0x77 0 512")
            assert rc != 0 and "LUN is write protected" in out, out
        else:
            assert result.status == 0, f"WRITE(10) to the writable LUN: {result.describe()}"
            assert image.path.read_bytes()[:512] == WRITE, "the write did not reach the file"
    finally:
        server.stop()
    assert_gone("tgtd", pids, before, host, port=server.port)


@needs_tgtd
@needs_ss
def test_tgtd_fallback_to_the_wildcard_portal_is_caught_and_killed(ctx, image, monkeypatch):
    """tgtd does not fail when its portal is taken: it listens on 0.0.0.0:3260 and
    [::]:3260 instead. The first tgtd gets a port someone else listens on; it must be
    killed (no wildcard listener remains) and a second one started on 127.0.0.1."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    handed = []

    class Busy:
        port = busy

        def release(self):
            pass

    def reserve():
        handed.append(None)
        return Busy() if len(handed) == 1 else PortReservation()

    monkeypatch.setattr(iscsi, "reserve_port", reserve)
    try:
        server = iscsi.start_tgtd(ctx, image.path, readonly=True)
    finally:
        taken.close()
    try:
        first = next(p for p in ctx.evidence.processes if p.name == "tgtd")
        assert first.returncode is not None, "the first tgtd still runs"
        # what it did instead of failing (0.0.0.0:3260, or no portal if 3260 is taken)
        log = (ctx.evidence.log_dir / f"tgtadm-{first.pid}.log").read_text()
        assert f"Portal: 127.0.0.1:{busy},1" not in log, log
        assert "Portal: 0.0.0.0:3260,1" in log or "Portal:" not in log, log
        assert server.port != busy and len(handed) == 2
        assert_only_loopback("tgtd", server.namespace.pids(), server.port)
    finally:
        server.stop()
