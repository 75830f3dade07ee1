"""Read-only storage and NBD servers really refuse writes, as root, and leave nothing.

Root ignores 0444, so each storage kind is checked by writing *through the
storage itself* the way QEMU would see it (inside the mount namespace, as the
unprivileged uid), and the writable kind must accept the same write, so the
check can fail. NBD exports are written to with qemu-io over the protocol.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import assert_gone, assert_only_loopback, host_state
from pytest_qemublock.backends import nbd
from pytest_qemublock.storage.images import ImageFactory
from pytest_qemublock.storage.local import unavailable_reason

STRERROR = {"erofs": "Read-only file system", "eacces": "Permission denied"}


@pytest.mark.parametrize("kind", ["erofs", "eacces"])
def test_read_only_storage_refuses_root_and_flips(kind, targets, host):
    assert os.geteuid() == 0, "these checks are about root, who ignores 0444"
    before = host_state()
    st = targets.storage(kind)
    st.make_readonly()
    err = st.write_probe()
    assert err and STRERROR[kind] in err, (
        f"{kind}: a write through the storage as QEMU sees it should fail with "
        f"{STRERROR[kind]!r}, got: {err!r}")
    st.make_writable()
    assert st.write_probe() is None, f"{kind}: after make_writable() the same write must succeed"
    st.make_readonly()
    err = st.write_probe()
    assert err and STRERROR[kind] in err, f"{kind}: flipped back, writes must fail again: {err!r}"
    holder = getattr(st, "holder", None)
    pids = [holder.pid] if holder is not None else []
    st.close()
    targets.storages.clear()
    assert_gone(f"{kind} storage", pids, before, host)
    if kind == "erofs":
        assert not any(st.mountpoint.iterdir()), "the read-only bind mount is visible on the host"


def test_writable_storage_accepts_the_probe_write(targets):
    """The control for the tests above: the probe itself can succeed."""
    assert targets.storage("rw").write_probe() is None


def test_unknown_storage_kind_has_a_reason():
    assert "unknown storage kind" in unavailable_reason("floppy")


SERVERS = {
    "qemu-nbd": nbd.start_qemu_nbd,
    "qsd": nbd.start_qsd_export,
    "nbdkit": nbd.start_nbdkit,
}


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("server", [*SERVERS, "qemu-export"])
@pytest.mark.parametrize("readonly", [True, False], ids=["ro", "rw"])
def test_nbd_export_refuses_writes_read_only_and_leaves_nothing(server, transport, readonly, targets,
                                                               qemu_tools, qemu_caps, host):
    ctx = targets.server_ctx
    img = ImageFactory(qemu_tools, targets.storage("rw").directory).from_recipe("raw")
    before = host_state()
    if server == "qemu-export":
        srv = nbd.start_qemu_export(ctx, img.path, readonly=readonly, transport=transport,
                                    accel=qemu_caps.accel)
    else:
        srv = SERVERS[server](ctx, img.path, readonly=readonly, transport=transport)
    pids = [srv.proc.pid]
    try:
        if transport == "tcp":
            assert_only_loopback(server, pids, srv.listener.port)
        res = qemu_tools.io("-f", "raw", "-c", "write -P 0x77 0 512", srv.uri(), check=False)
        out = (res.stdout + res.stderr).strip()
        if readonly:
            assert res.returncode != 0 or "failed" in out, (
                f"{server} read-only export over {transport} accepted a write as root: {out}")
            assert img.unchanged(), f"{server}: the read-only export's image changed"
        else:
            assert res.returncode == 0 and "wrote 512/512" in out, (
                f"{server} writable export over {transport} refused a write: {out}")
            assert not img.unchanged(), f"{server}: the write through the writable export did not land"
    finally:
        srv.stop()
        targets.servers.clear()
    assert_gone(server, pids, before, host,
                port=srv.listener.port if transport == "tcp" else None)
    if srv.listener.path is not None:
        assert not Path(srv.listener.path).exists(), f"{server} left its socket {srv.listener.path}"
