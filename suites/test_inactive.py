"""Inactive nodes (QEMU 10.0's blockdev-set-active): not writable, not read-only.

qcow2 n0 (read-write) over file f0 (``auto-read-only=on``) on writable
storage is inactivated with ``blockdev-set-active``: both nodes report
``active=false`` and still ``ro=false``, and f0's fd drops to O_RDONLY (no
one may write). A writable NBD export with ``allow-inactive`` leaves it
inactive and its server refuses a client's write (reads work); without
``allow-inactive`` the export activates the node (O_RDWR again);
``blockdev-set-active`` true does the same. HMP qemu-io's write on the
inactive node is a known QEMU bug (QEMU aborts). Builds without the command
or the ``active`` member skip with the probed reason.
"""
import json

import pytest

from pytest_qemublock.expectations import inactive as rules
from pytest_qemublock.host.process import ProcessError, describe_status
from pytest_qemublock.scenario import drive, matrix, outcome

pytestmark = pytest.mark.inactive

CASES = matrix.cases(backend_storage=[("file", "rw")], fmt=["qcow2"],
                     variant=["export-allow-inactive", "export-activates", "set-active", "hmp-qemu-io-write"])
WRITE = "write -P 0x77 0 512"


def check_state(vm, target, exp_active, what, build, err=None):
    exp, active = exp_active
    got = drive.state(vm, rules.NODES, {"image": target.fd_path}, err)
    outcome.check(exp, got, what=what, build=build)
    have = {n: vm.nodes()[n].get("active") for n in rules.NODES}
    assert have == active, (f"{what} [build {build}]: query-named-block-nodes active {have}, expected "
                            f"{active}\n  because:  {exp.because}")


def export_spec(sock, name):
    return ("driver=raw,file.driver=nbd,file.server.type=unix,"
            f"file.server.path={drive.qemu_opt_escape(str(sock))},file.export={name}")


@pytest.mark.parametrize("case", CASES)
def test_inactive_node(case, targets, qemu, qemu_build, qemu_caps, qemu_tools, qb_evidence):
    reason = rules.missing(qemu_caps)
    if reason:
        pytest.skip(f"build {qemu_build.name}: {reason}")
    if case.variant == "export-allow-inactive" and rules.missing_allow_inactive(qemu_caps):
        pytest.skip(f"build {qemu_build.name}: {rules.missing_allow_inactive(qemu_caps)}")
    build = qemu_build.name
    target = targets.target(case.backend, case.storage, "qcow2")
    f0 = target.node("f0", **{"auto-read-only": True})
    n0 = {"driver": "qcow2", "node-name": "n0", "file": "f0"}
    vm = qemu.start("-blockdev", json.dumps(f0), "-blockdev", json.dumps(n0), wrapper=target.wrapper)
    where = f"qcow2 n0 over file f0 (auto-read-only=on) on {target.describe()} ({case.id})"
    check_state(vm, target, rules.opened(), f"open {where}", build)
    err = vm.execute_error("blockdev-set-active", {"node-name": "n0", "active": False})
    check_state(vm, target, rules.inactivated(), f"blockdev-set-active n0 false, {where}", build, err)

    if case.variant == "hmp-qemu-io-write":
        writer_on_inactive(case, vm, qemu, build, qemu_caps, where)
        return
    if case.variant == "set-active":
        err = vm.execute_error("blockdev-set-active", {"node-name": "n0", "active": True})
        check_state(vm, target, rules.reactivated(), f"blockdev-set-active n0 true, {where}", build, err)
        return

    sock = qb_evidence.workdir / "nbd.sock"
    drive.nbd_server_start(vm, sock)
    args = {"type": "nbd", "id": "e0", "node-name": "n0", "name": "e0", "writable": True}
    if case.variant == "export-activates":
        err = vm.execute_error("block-export-add", args)
        check_state(vm, target, rules.export_activates(), f"block-export-add {args}, {where}", build, err)
        return
    args["allow-inactive"] = True
    err = vm.execute_error("block-export-add", args)
    check_state(vm, target, rules.export_allow_inactive(), f"block-export-add {args}, {where}", build, err)
    wrote = qemu_tools.io_command(WRITE, "--image-opts", export_spec(sock, "e0"))
    assert rules.NBD_WRITE_REFUSED in wrote.output and not wrote.done, (
        f"qemu-io '{WRITE}' through export e0 of the inactive n0 [build {build}]: expected "
        f"{rules.NBD_WRITE_REFUSED!r}\n  because:  {rules.NBD_WRITE_BECAUSE}\n  QEMU did: {wrote.describe()}")
    pattern = target.image.patterns[0]
    read = qemu_tools.io_command(f"read {pattern.io_args()}", "-r", "--image-opts", export_spec(sock, "e0"))
    assert read.pattern_ok, (f"read {pattern.io_args()} through export e0 of the inactive n0 "
                             f"[build {build}]: "
                             f"expected the image's pattern\n  because:  {rules.NBD_WRITE_BECAUSE}\n"
                             f"  QEMU did: {read.describe()}")
    check_state(vm, target, rules.export_allow_inactive(), f"after the client's write and read, {where}",
                build)


def writer_on_inactive(case, vm, qemu, build, caps, where):
    """HMP qemu-io write on the inactive n0: refused, or (known bug) QEMU aborts."""
    checks = outcome.CaseCheck("inactive", case.id, build=build, caps=caps)
    try:
        res = drive.hmp_qemu_io(vm, "n0", WRITE)
    except ProcessError:
        got = drive.died(qemu, vm)  # QEMU died: this test's finding (or the known bug's)
    else:
        got = drive.state(vm, rules.NODES, {}, detail=res.output)
        got.ok, got.error = res.done, res.reply.strip() or res.output.strip()
        if not vm.alive():
            got.died, got.stderr = describe_status(vm.proc.returncode), vm.proc.stderr_text(4000)
    checks.step(rules.hmp_write_refused(), got, what=f'HMP qemu-io n0 "{WRITE}" on the inactive n0, {where}')
    checks.finish()
