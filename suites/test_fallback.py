"""Drivers whose read-only fallback needs auto-read-only: vvfat over a host directory, bochs, cloop.

A vvfat node (no ``rw=on``) is opened through -blockdev, -drive, blockdev-add
and qemu-storage-daemon with read-only / auto-read-only on, off and unset: a
read-write open without auto-read-only fails with ``Image is read-only``,
auto-read-only=on (and -drive's default) degrades it to ro=true, read-only=on
opens ro=true. A writer attaching to an opened node is refused and the
directory is unchanged afterwards. The bochs and cloop formats (which QEMU
cannot write either) behave the same on a writable file: images the suite
writes itself (block/bochs.c's and block/cloop.c's layouts), read back
through the node.
"""
import hashlib
import json
import struct
import zlib

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
FORMAT_CASES = sorted((p for fmt in ("bochs", "cloop") for iface in matrix.INTERFACES for ro, aro in OPTS
                       for p in matrix.cases(backend_storage=[("file", "rw")], fmt=[fmt],
                                             interface=[iface], ro=[ro], aro=[aro])),
                      key=lambda p: p.id)
DATA = Pattern(0x5A, "0", "64k")


def bochs_image(path, size=1 << 20, extent=64 << 10):
    """A bochs "Redolog/Growing" image (block/bochs.c struct bochs_header, version 2) of *size*
    bytes whose first extent holds DATA; the other extents are unallocated."""
    entries = size // extent
    header = struct.pack("<32s16s16sIIIII I Q", b"Bochs Virtual HD Image", b"Redolog", b"Growing",
                         0x00020000, 512, entries, 512, extent, 0, size).ljust(512, b"\0")
    catalog = struct.pack(f"<{entries}I", 0, *([0xFFFFFFFF] * (entries - 1)))
    bitmap = (b"\xff" * (extent // 512 // 8)).ljust(512, b"\0")  # every sector of extent 0 present
    path.write_bytes(header + catalog + bitmap + bytes([DATA.byte]) * extent)


def cloop_image(path, size=1 << 20, block=64 << 10):
    """A cloop image (block/cloop.c cloop_open: 128 bytes of preamble, be32 block size, be32
    block count, be64 offsets of the zlib-compressed blocks) whose first block holds DATA."""
    blocks = [zlib.compress(bytes([DATA.byte]) * block)] + [zlib.compress(bytes(block))] * (size // block - 1)
    offsets = [128 + 8 + 8 * (len(blocks) + 1)]
    for data in blocks:
        offsets.append(offsets[-1] + len(data))
    head = b"#!/bin/sh\n#V2.0 Format\n".ljust(128, b"\0") + struct.pack(">II", block, len(blocks))
    path.write_bytes(head + struct.pack(f">{len(offsets)}Q", *offsets) + b"".join(blocks))


IMAGES = {"bochs": bochs_image, "cloop": cloop_image}


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


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_format_needs_auto_read_only(case, qemu, qemu_build, qemu_caps, targets, qb_evidence):
    if case.fmt not in qemu_caps.formats:
        pytest.skip(f"build {qemu_build.name} has no {case.fmt} driver (probed formats)")
    path = targets.storage(case.storage).directory / f"image.{case.fmt}"
    IMAGES[case.fmt](path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    opts = {"driver": case.fmt, "node-name": "n0", **case.options(),
            "file": {"driver": "file", "filename": str(path)}}
    what = f"open {case.fmt} n0 {json.dumps(case.options())} over {path} via {case.interface} ({case.id})"
    qb_evidence.note(case=case.describe(), options=opts)

    expected = fallback.expect_open(case.interface, case.ro, case.aro, driver=case.fmt)
    got = open_node(qemu, case.interface, opts)
    outcome.check(expected, got, what=what, build=qemu_build.name)
    if got.ok and got.vm.kind == "system":  # qemu-storage-daemon has no HMP
        read = drive.hmp_qemu_io(got.vm, "n0", f"read {DATA.io_args()}")
        assert read.pattern_ok, (f"HMP qemu-io read {DATA.io_args()} after {what} "
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
