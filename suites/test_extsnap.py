"""External snapshots over read-only and read-write bases, and over read-only storage.

A qcow2 base ``b0`` behind ``-drive`` ``d0`` gets an overlay ``n0`` through
``blockdev-snapshot-sync`` (QEMU creates it, with the base's flags) or
``blockdev-snapshot`` (added read-write before): afterwards the ``ro`` of base,
base file and overlay, query-block's ``ro`` of d0 (the overlay), and QEMU's fd
on each image. On read-only storage (erofs) the overlay goes to writable
storage: a -sync overlay of a read-only base is read-only, an added one
writable; an overlay file in the read-only storage cannot be created. An
overlay that a reader already uses (a read-only NBD export) is refused.

Expectations: ``pytest_qemublock/expectations/extsnap.py``.
"""
import re

import pytest

from pytest_qemublock.expectations import extsnap
from pytest_qemublock.scenario import drive, exports, matrix, outcome

pytestmark = pytest.mark.extsnap

CASES = (matrix.cases(backend_storage=[("file", "rw")], fmt=["qcow2"], ro=[True, False],
                      variant=["snapshot-sync", "snapshot"])
         + matrix.cases(backend_storage=[("file", "rw")], fmt=["qcow2"], ro=[True],
                        variant=["snapshot-overlay-in-use"])
         + matrix.cases(backend_storage=[("file", "erofs")], fmt=["qcow2"], ro=[True],
                        variant=["snapshot-sync", "snapshot", "snapshot-sync-beside-base"]))


@pytest.mark.qemu_requires(command="blockdev-snapshot-sync")
@pytest.mark.qemu_requires(command="blockdev-snapshot")
@pytest.mark.parametrize("case", CASES)
def test_external_snapshot(case, targets, qemu, qemu_build, qemu_tools, qb_evidence):
    st = targets.storage(case.storage)
    base = st.directory / "base.qcow2"
    qemu_tools.img("create", "-f", "qcow2", base, "1M")
    beside = case.variant == "snapshot-sync-beside-base"
    ov_dir = st.directory if beside else targets.storage("rw").directory
    overlay = ov_dir / "overlay.qcow2"
    base_q = st.qemu_path(base)
    overlay_q = st.qemu_path(overlay) if beside else overlay
    arg = (f"if=none,id=d0,node-name=b0,driver=qcow2,file.driver=file,file.node-name=bf,"
           f"file.filename={drive.qemu_opt_escape(str(base_q))},read-only={'on' if case.ro else 'off'}")
    vm = qemu.start("-drive", arg, wrapper=st.wrapper)
    if case.variant.startswith("snapshot-overlay") or case.variant == "snapshot":
        qemu_tools.img("create", "-f", "qcow2", overlay, "1M")
        vm.execute("blockdev-add", {"driver": "qcow2", "node-name": "n0", "backing": None,
                                    "file": {"driver": "file", "node-name": "nf",
                                             "filename": str(overlay_q)}})
        if case.variant == "snapshot-overlay-in-use":  # a reader of the overlay: a read-only export
            view = exports.qmp_export(vm, "block-export-add", False, targets.server_ctx.sockdir,
                                      qemu_tools, node="n0")
            assert isinstance(view, exports.ClientView), f"exporting the overlay n0 failed: {view}"
        command, args = "blockdev-snapshot", {"node": "b0", "overlay": "n0"}
    else:
        command = "blockdev-snapshot-sync"
        args = {"node-name": "b0", "snapshot-file": str(overlay_q), "snapshot-node-name": "n0",
                "format": "qcow2"}
    qb_evidence.note(case=case.describe(), drive=arg, command=command, arguments=args)
    err = vm.execute_error(command, args)
    if beside:
        exp = extsnap.expect_sync_on_read_only_storage(
            rf"Could not create '{re.escape(str(overlay_q))}': {re.escape(st.error_text)}")
        got = drive.state(vm, ("b0", "bf"), {"base": base_q}, err)
    else:
        exp = (extsnap.expect_overlay_in_use() if case.variant == "snapshot-overlay-in-use"
               else extsnap.expect_snapshot(case.variant, case.ro))
        got = drive.state(vm, ("n0", "b0", "bf"), {"base": base_q, "overlay": overlay_q}, err)
        blk = [b for b in vm.execute("query-block") if b.get("device") == "d0"]
        if err is None:  # d0's root is the overlay now: its ro is n0's
            got.blk_ro = bool(blk[0]["inserted"]["ro"]) if blk and "inserted" in blk[0] else None
        else:
            assert blk and blk[0]["inserted"]["node-name"] == "b0", (
                f"{case.id} [build {qemu_build.name}]: {command} refused, but d0 shows {blk}")
    outcome.check(exp, got, what=f"{command} {args} over -drive {arg} ({case.id})", build=qemu_build.name)
