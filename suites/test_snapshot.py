"""snapshot=on over storage that refuses writes: a writable guest view, an untouched image.

``-drive file=IMAGE,format=raw|qcow2,snapshot=on`` on file-erofs and
file-eacces (and writable storage, for comparison): QEMU starts, the image's
node is ro=true with an O_RDONLY fd, query-block says the drive is writable,
a write through it succeeds and reads back (the temporary overlay took it)
next to the image's own data; the image is bit-identical after QEMU quit and
the overlay (in a ``$TMPDIR`` of the test's own) is gone. With
``read-only=on`` as well the writer is refused.
"""
import os

import pytest

from pytest_qemublock.expectations import snapshot as rules
from pytest_qemublock.qemu.instance import Wrapper
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.storage.images import Pattern

pytestmark = pytest.mark.snapshot

CASES = matrix.cases(backend_storage=matrix.backend_storages(["file"]), fmt=["raw", "qcow2"],
                     interface=["drive"], variant=["snapshot", "snapshot-read-only"])
WRITE = Pattern(0x77, "64k", "512")  # next to the recipe's 0x5a at 0..64k


@pytest.mark.parametrize("case", CASES)
def test_snapshot_on_read_only_storage(case, targets, qemu, qemu_build, qb_evidence):
    target = targets.target(case.backend, case.storage, case.fmt)
    read_only = case.variant == "snapshot-read-only"
    tmpdir = qb_evidence.workdir / "snapshot-tmp"
    tmpdir.mkdir()
    os.chmod(tmpdir, 0o1777)  # an eacces QEMU runs as nobody
    opts = {"driver": case.fmt, "node-name": "n0", "file": target.node("p0")}
    arg = drive.drive_arg(opts) + ",snapshot=on" + (",read-only=on" if read_only else "")
    what = f"-drive {arg} on {target.describe()} ({case.id})"
    build = qemu_build.name
    qb_evidence.note(case=case.describe(), drive=arg)

    vm = qemu.start("-drive", arg, wrapper=target.wrapper + Wrapper(env={"TMPDIR": str(tmpdir)}))
    outcome.check(rules.opened(), drive.state(vm, ["n0"], {"image": target.fd_path}), what=what, build=build)
    blk = {b["device"]: b for b in vm.execute("query-block")}["d0"]["inserted"]
    want, why = rules.guest_view_ro(read_only)
    assert blk["ro"] is want, (f"{what} [build {build}]: query-block d0 ro={blk['ro']}, expected {want}\n"
                               f"  because:  {why}")

    res = drive.hmp_qemu_io(vm, "d0", f"write {WRITE.io_args()}")
    got = drive.state(vm, ["n0"], {"image": target.fd_path}, detail=res.output)
    got.ok, got.error = res.done, res.reply.strip() or res.output.strip()
    outcome.check(rules.write(read_only), got, what=f"HMP qemu-io d0 \"write {WRITE.io_args()}\", {what}",
                  build=build)
    expect_back = [target.image.patterns[0]] + ([] if read_only else [WRITE])
    for pattern in expect_back:
        read = drive.hmp_qemu_io(vm, "d0", f"read {pattern.io_args()}")
        assert read.pattern_ok, (f"read {pattern.io_args()} through d0, {what} [build {build}]: expected "
                                 f"the pattern\n  because:  {rules.write(read_only).because}\n"
                                 f"  QEMU did: {read.describe()}")
    drive.assert_untouched(qemu, target, f"{what} [build {build}]", "although the guest wrote")
    left = sorted(p.name for p in tmpdir.iterdir())
    assert left == [], f"{what} [build {build}]: the temporary overlay was left in $TMPDIR: {left}"
