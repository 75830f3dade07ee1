"""host_device on a read-only loop device (``losetup -r``).

The image is attached read-only as a loop device and opened through QEMU's
host_device driver with each interface: with ``auto-read-only=on`` (and
-drive's default) the node opens like a file node on read-only storage
(ro=false, an O_RDONLY fd: dynamic auto-read-only works on host_device
too), a writer attaching and a reopen to read-write are refused with
``The device is not writable: Permission denied`` and leave it as it was;
without auto-read-only the open fails with that text; ``read-only=on``
opens ro=true. A read-write raw node on top opens the same way (it takes WRITE
only for a writer); a read-write qcow2 node needs WRITE at once: refused.
The image behind the loop device is bit-identical afterwards and the loop
device is detached whatever the outcome (backends/hostdev.py).

A dedicated suite rather than a registry backend: registered, hostdev would
join every matrix suite, whose other cases flip storage (make_writable) or
need formats and pools a loop device does not give.
"""
import json

import pytest

from pytest_qemublock.backends.hostdev import HostdevBackend
from pytest_qemublock.expectations import hostdev as rules
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.storage.images import Pattern

pytestmark = pytest.mark.hostdev

PAIR = [("hostdev", "ro")]
OPTS = [(False, True), (False, False), (True, None), (None, None)]  # (read-only, auto-read-only)
CASES = sorted(
    [p for iface in matrix.INTERFACES for ro, aro in OPTS
     for p in matrix.cases(backend_storage=PAIR, fmt=["proto"], interface=[iface], ro=[ro], aro=[aro])]
    + [p for fmt in ("raw", "qcow2") for iface in ("qmp", "drive")
       for ro, aro in [(False, True), (None, None)]
       for p in matrix.cases(backend_storage=PAIR, fmt=[fmt], interface=[iface], ro=[ro], aro=[aro])],
    key=lambda p: p.id)
WRITE = Pattern(0x77, "0", "512")


@pytest.fixture
def hostdev(targets, qemu_build):
    """A Target on a read-only loop device (skips with the reason where the host cannot)."""
    backend = HostdevBackend()
    reason = backend.unavailable(qemu_build, "ro")
    if reason:
        pytest.skip(reason)
    return lambda recipe: backend.provide(targets, recipe, "ro")


def node_options(case, target):
    if case.fmt == "proto":
        return target.node("n0", **case.options())
    return {"driver": case.fmt, "node-name": "n0", **case.options(), "file": target.node("p0")}


@pytest.mark.parametrize("case", CASES)
def test_hostdev_read_only_loop(case, hostdev, qemu, qemu_build, qemu_caps, qb_evidence):
    target = hostdev("qcow2" if case.fmt == "qcow2" else "raw")
    opts = node_options(case, target)
    what = (f"n0 {json.dumps(case.options())} ({case.fmt}) on {target.options['filename']} "
            f"via {case.interface}")
    build = qemu_build.name
    qb_evidence.note(case=case.describe(), options=opts, loop=target.options["filename"])

    expected = rules.expect_open(target, case.fmt, case.interface, case.ro, case.aro, qemu_caps)
    got = drive.open_node(qemu, case.interface, opts, target)
    outcome.check(expected, got, what=f"open {what}", build=build, context=case.id)
    vm = got.vm
    if got.ok and not case.ro:
        if vm.kind == "system":  # qemu-storage-daemon has no HMP
            wrote = drive.qemu_io_write(vm, "n0", WRITE, target, interface=case.interface)
            outcome.check(rules.expect_writer_refused(target, expected), wrote,
                          what=f"HMP qemu-io write on {what}", build=build, context=case.id)
        if case.fmt == "proto" and case.interface != "drive" and qemu_caps.has_command("blockdev-reopen"):
            rw = target.node("n0", **{"read-only": False, "auto-read-only": False})
            outcome.check(rules.expect_writer_refused(target, expected),
                          drive.reopen_node(vm, rw, target, interface=case.interface),
                          what=f"blockdev-reopen {rw} after open {what}", build=build, context=case.id)
    drive.assert_untouched(qemu, target, f"{what} [build {build}] ({case.id})")
