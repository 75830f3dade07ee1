"""Drivers whose read-only fallback needs auto-read-only: vvfat over a host directory, bochs.

A vvfat node (no ``rw=on``) is opened through -blockdev, -drive, blockdev-add
and qemu-storage-daemon with read-only / auto-read-only on, off and unset: a
read-write open without auto-read-only fails with ``Image is read-only``,
auto-read-only=on (and -drive's default) degrades it to ro=true, read-only=on
opens ro=true. A writer attaching to an opened node is refused and the
directory is unchanged afterwards. The bochs format (which QEMU cannot
write either) behaves the same on a writable file: a bochs image written
by the suite itself (block/bochs.c's layout), read back through the node.
"""
import hashlib
import json
import struct

import pytest

from pytest_qemublock.expectations import fallback
from pytest_qemublock.qemu.instance import LaunchError
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.storage.images import Pattern

pytestmark = pytest.mark.fallback

OPTS = [(None, None), (False, False), (False, True), (True, None)]  # (read-only, auto-read-only)
CASES = sorted((p for iface in matrix.INTERFACES for ro, aro in OPTS
                for p in matrix.cases(backend_storage=[("vvfat", "dir")], interface=[iface],
                                      ro=[ro], aro=[aro])),
               key=lambda p: p.id)
BOCHS_CASES = sorted((p for iface in matrix.INTERFACES for ro, aro in OPTS
                      for p in matrix.cases(backend_storage=[("file", "rw")], fmt=["bochs"],
                                            interface=[iface], ro=[ro], aro=[aro])),
                     key=lambda p: p.id)
BOCHS_DATA = Pattern(0x5A, "0", "64k")


def bochs_image(path, size=1 << 20, extent=64 << 10):
    """A bochs "Redolog/Growing" image (block/bochs.c struct bochs_header, version 2) of *size*
    bytes whose first extent holds BOCHS_DATA; the other extents are unallocated."""
    entries = size // extent
    header = struct.pack("<32s16s16sIIIII I Q", b"Bochs Virtual HD Image", b"Redolog", b"Growing",
                         0x00020000, 512, entries, 512, extent, 0, size).ljust(512, b"\0")
    catalog = struct.pack(f"<{entries}I", 0, *([0xFFFFFFFF] * (entries - 1)))
    bitmap = (b"\xff" * (extent // 512 // 8)).ljust(512, b"\0")  # every sector of extent 0 present
    path.write_bytes(header + catalog + bitmap + bytes([BOCHS_DATA.byte]) * extent)


def tree_digest(root):
    """Names, sizes and contents of every file under *root*."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def open_node(qemu, interface, opts):
    try:
        if interface == "blockdev":
            vm = qemu.start("-blockdev", json.dumps(opts))
        elif interface == "drive":
            vm = qemu.start("-drive", drive.drive_arg(opts))
        elif interface == "qsd":
            vm = qemu.start_qsd("--blockdev", json.dumps(opts))
        else:
            vm = qemu.start()
            return drive.state(vm, ["n0"], {}, vm.execute_error("blockdev-add", opts))
    except LaunchError as e:
        return drive.launch_failed(e)
    return drive.state(vm, ["n0"], {})


@pytest.mark.parametrize("case", CASES)
def test_vvfat_needs_auto_read_only(case, qemu, qemu_build, qemu_caps, qb_evidence):
    if "vvfat" not in qemu_caps.formats:
        pytest.skip(f"build {qemu_build.name} has no vvfat driver (probed formats)")
    root = qb_evidence.workdir / "vvfat"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("vvfat read-only\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 8)
    before = tree_digest(root)
    opts = {"driver": "vvfat", "node-name": "n0", "dir": str(root), **case.options()}
    what = f"open vvfat n0 {json.dumps(case.options())} via {case.interface} ({case.id})"
    qb_evidence.note(case=case.describe(), options=opts)

    expected = fallback.expect_open(case.interface, case.ro, case.aro)
    got = open_node(qemu, case.interface, opts)
    outcome.check(expected, got, what=what, build=qemu_build.name)
    if got.ok and got.vm.kind == "system":  # qemu-storage-daemon has no HMP
        res = drive.hmp_qemu_io(got.vm, "n0", "write -P 0x77 0 512")
        wrote = drive.state(got.vm, ["n0"], {}, detail=res.output)
        wrote.ok, wrote.error = res.done, res.reply.strip() or res.output.strip()
        outcome.check(fallback.expect_writer_refused(expected), wrote,
                      what=f"HMP qemu-io n0 \"write -P 0x77 0 512\" after {what}", build=qemu_build.name)
    problems = qemu.shutdown_all()
    assert not problems, "\n".join(problems)
    assert tree_digest(root) == before, f"{what} [build {qemu_build.name}]: {root} changed"


@pytest.mark.parametrize("case", BOCHS_CASES)
def test_bochs_needs_auto_read_only(case, qemu, qemu_build, qemu_caps, targets, qb_evidence):
    if "bochs" not in qemu_caps.formats:
        pytest.skip(f"build {qemu_build.name} has no bochs driver (probed formats)")
    path = targets.storage(case.storage).directory / "image.bochs"
    bochs_image(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    opts = {"driver": "bochs", "node-name": "n0", **case.options(),
            "file": {"driver": "file", "filename": str(path)}}
    what = f"open bochs n0 {json.dumps(case.options())} over {path} via {case.interface} ({case.id})"
    qb_evidence.note(case=case.describe(), options=opts)

    expected = fallback.expect_open(case.interface, case.ro, case.aro, driver="bochs")
    got = open_node(qemu, case.interface, opts)
    outcome.check(expected, got, what=what, build=qemu_build.name)
    if got.ok and got.vm.kind == "system":  # qemu-storage-daemon has no HMP
        read = drive.hmp_qemu_io(got.vm, "n0", f"read {BOCHS_DATA.io_args()}")
        assert read.pattern_ok, (f"HMP qemu-io read {BOCHS_DATA.io_args()} after {what} "
                                 f"[build {qemu_build.name}]: expected the image's data\n"
                                 f"  QEMU did: {read.describe()}")
        res = drive.hmp_qemu_io(got.vm, "n0", "write -P 0x77 0 512")
        wrote = drive.state(got.vm, ["n0"], {}, detail=res.output)
        wrote.ok, wrote.error = res.done, res.reply.strip() or res.output.strip()
        outcome.check(fallback.expect_writer_refused(expected), wrote,
                      what=f"HMP qemu-io n0 \"write -P 0x77 0 512\" after {what}", build=qemu_build.name)
    problems = qemu.shutdown_all()
    assert not problems, "\n".join(problems)
    after = hashlib.sha256(path.read_bytes()).hexdigest()
    assert after == before, f"{what} [build {qemu_build.name}]: {path} changed"
