"""Degrade: auto-read-only=on on storage that refuses writes.

The open succeeds, and what shows it depends on the driver: an nbd node on a
read-only export reports ``ro=true``; a file-posix node keeps ``ro=false``
and holds an O_RDONLY fd (dynamic auto-read-only). Either way, writers that
attach later are refused with the storage's or the block layer's error (a
writable NBD export; HMP ``qemu-io write``), the node stays as it was, reads
through a read-only export return the image's pattern, and the image is
bit-identical afterwards.

Without auto-read-only (or for a read-write qcow2, which auto-read-only
cannot save) the open fails and leaves nothing behind: no node, no fd, no
OFD lock, and the node name can be used again at once.

Every read-only backend-storage pair runs; the file backends and one NBD
server (qemu-nbd over unix) run every interface and both formats, the other
NBD servers and transports a bare protocol node over QMP (the server, not the
interface, is what differs there).
"""
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from pytest_qemublock.backends import registry
from pytest_qemublock.expectations import degrade
from pytest_qemublock.host import leftovers, procfs
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.storage.images import Pattern
from pytest_qemublock.storage.local import qemu_socket_dir

pytestmark = pytest.mark.degrade

RO_PAIRS = [p for p in matrix.backend_storages() if p[1] != "rw"]
# ssh has no fallback: refused cases only
DEGRADING = [p for p in RO_PAIRS if registry.driver_of(p[0]).degrades]
FULL_PAIRS = [p for p in DEGRADING if p[0] in ("file", "nbd-qemu-nbd-unix")]
REST_PAIRS = [p for p in DEGRADING if p not in FULL_PAIRS]

#: A pattern the recipes never write: if it ever lands, Image.unchanged() says so.
WRITE = Pattern(0x77, "0", "512")


def _degrade_cases():
    out = []
    for iface in matrix.INTERFACES:
        # -drive is tested with its own default (auto-read-only on), the others say it
        aro = [None] if iface == "drive" else [True]
        out += matrix.cases(backend_storage=FULL_PAIRS, fmt=["proto", "raw"], interface=[iface],
                            ro=[False], aro=aro)
    out += matrix.cases(backend_storage=REST_PAIRS, fmt=["proto"], interface=["qmp"], ro=[False], aro=[True])
    return sorted(out, key=lambda p: p.id)


DEGRADE_CASES = _degrade_cases()

REFUSED_CASES = sorted(
    matrix.cases(backend_storage=RO_PAIRS, fmt=["proto"], interface=["qmp"], ro=[False], aro=[False])
    + matrix.cases(backend_storage=RO_PAIRS, fmt=["qcow2"], interface=["qmp"], ro=[False], aro=[True]),
    key=lambda p: p.id)


def node_options(case, target, **extra):
    """n0 carries the options; a format node gets an inline protocol child p0 (as in test_open)."""
    opts = {**case.options(), **extra}
    if case.fmt == "proto":
        return target.node("n0", **opts)
    return {"driver": case.fmt, "node-name": "n0", **opts, "file": target.node("p0")}


def described(case, target, opts):
    """node, options, backend and interface, for failure messages."""
    shown = {k: v for k, v in opts.items() if k in ("driver", "read-only", "auto-read-only")}
    child = f" over {opts['file']['driver']} p0" if isinstance(opts.get("file"), dict) else ""
    return f"n0 {json.dumps(shown)}{child} on {target.describe()} via {case.interface} ({case.id})"


@pytest.fixture
def export_sock(qb_evidence):
    """A unix socket path for the NBD server of the QEMU under test, in a directory the
    QEMU can create sockets in (an eacces QEMU runs as nobody) and no other user can reach."""
    d, tmp = qb_evidence.workdir / "nbd", None
    if len(str(d / "e.sock")) > 100:  # sun_path holds 108 bytes
        d = tmp = Path(tempfile.mkdtemp(prefix="qbd-", dir="/tmp"))
        leftovers.claim(d)  # removed by the next run if this one dies
    qemu_socket_dir(d)
    yield d / "e.sock"
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("case", DEGRADE_CASES)
def test_degraded_node_refuses_writers_and_serves_reads(case, targets, qemu, qemu_build, qemu_caps,
                                                        qemu_tools, qb_evidence, export_sock):
    target = targets.target(case.backend, case.storage, "raw")
    opts = node_options(case, target)
    what = described(case, target, opts)
    qb_evidence.note(case=case.describe(), options=opts)
    expected = degrade.expect_degraded(case, target, qemu_caps)

    observed = drive.open_node(qemu, case.interface, opts, target)

    outcome.check(expected, observed, what=f"open {what}", build=qemu_build.name)
    vm = observed.vm
    drive.nbd_server_start(vm, export_sock)
    writers = {"export": ("block-export-add writable=true",
                          lambda: drive.export_writer(vm, "n0", "w0", target, interface=case.interface))}
    if vm.kind == "system":  # qemu-storage-daemon has no HMP
        writers["hmp-qemu-io"] = (
            "hmp qemu-io write",
            lambda: drive.qemu_io_write(vm, "n0", WRITE, target, interface=case.interface))
    for writer, (step, attach) in writers.items():
        # a refused writer leaves the node as it was: the open's state, checked with the error
        exp = degrade.expect_writer_refused(case, target, writer)
        exp = exp.replace(ro=expected.ro, fds=expected.fds,
                          because=f"{exp.because}; a refused writer leaves the node as it was: "
                                  f"{expected.because}")
        outcome.check(exp, attach(), what=f"{step} on {what}", build=qemu_build.name)

    pattern = target.image.patterns[0]
    read = drive.read_export(vm, qemu_tools, export_sock, "n0", "r0", pattern)
    assert read.pattern_ok, (f"read back {what} [build {qemu_build.name}]: "
                             f"expected pattern {pattern.io_args()}\n"
                             f"  because:  {degrade.READS_SERVED}\n  QEMU did: {read.describe()}")
    drive.assert_untouched(qemu, target, f"{what} [build {qemu_build.name}]",
                           "although every writer was refused and the storage is read-only")


@pytest.mark.parametrize("case", REFUSED_CASES)
def test_refused_open_leaves_nothing_behind(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    target = targets.target(case.backend, case.storage, "raw" if case.fmt == "proto" else case.fmt)
    opts = node_options(case, target)
    what = described(case, target, opts)
    qb_evidence.note(case=case.describe(), options=opts)

    observed = drive.open_node(qemu, "qmp", opts, target)

    outcome.check(degrade.expect_refused(case, target), observed, what=f"open {what}",
                  build=qemu_build.name)
    vm = observed.vm
    left = sorted(set(vm.nodes()) & {"n0", "p0"})
    assert not left, (f"after refused open of {what} [build {qemu_build.name}]: nodes {left} exist, "
                      f"expected none\n  because:  {degrade.NOTHING_LEFT}")
    if target.fd_path is not None:
        # No fd, and no OFD lock: a qcow2 node takes permissions (and so locks) on its
        # file at open. (For nbd the image belongs to the server; QEMU only held a connection.)
        fds = procfs.fd_modes(vm.pid, target.fd_path)
        locks = procfs.locks_on(target.image.path)
        assert fds == [] and locks == [], (
            f"after refused open of {what} [build {qemu_build.name}]: QEMU still holds "
            f"fds {fds} and /proc/locks has {locks} for {target.image.path}, expected neither\n"
            f"  because:  {degrade.NOTHING_LEFT}")

    retry = node_options(case, target, **{"read-only": True})
    outcome.check(degrade.expect_retry_read_only(case, target), drive.add_node(vm, retry, target),
                  what=f"blockdev-add {described(case, target, retry)} right after the refused one",
                  build=qemu_build.name)
    pattern = target.image.patterns[0]
    read = drive.hmp_qemu_io(vm, "n0", f"read {pattern.io_args()}")
    assert read.pattern_ok, (
        f"HMP qemu-io read of {described(case, target, retry)} after the refused open "
        f"[build {qemu_build.name}]: expected pattern {pattern.io_args()}\n"
        f"  because:  the refused open left the image and the node name untouched\n"
        f"  QEMU did: {read.describe()}")
    drive.assert_untouched(qemu, target, f"{what} [build {qemu_build.name}]")

