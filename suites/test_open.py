"""Open: read-only x auto-read-only x storage x interface, on every backend.

QEMU's iotest 232 covers 36 of these cases for the file protocol only and
refuses to run as root; this suite runs them all, as root, on every backend,
for a bare protocol node (``proto``) and for a qcow2 node over it.
"""
import pytest

from pytest_qemublock import expectations
from pytest_qemublock.scenario import drive, matrix, outcome

pytestmark = pytest.mark.open

_BACKENDS = matrix.backend_storages()
# Backends vary fastest: consecutive cases (and so both xdist workers at any moment) mix
# CPU-bound backends with latency-bound ones (ssh: a handshake per open). In backend order,
# both workers ran the ssh cases at the same time, with the CPUs 25-40% idle for 10 s.


def _backends_fastest(param):
    c = param.values[0]
    return (matrix.INTERFACES.index(c.interface), matrix.TRISTATE.index(c.ro),
            matrix.TRISTATE.index(c.aro), c.fmt, _BACKENDS.index((c.backend, c.storage)))


CASES = sorted(matrix.cases(backend_storage=_BACKENDS, fmt=["proto", "qcow2"],
                            interface=matrix.INTERFACES, ro=matrix.TRISTATE, aro=matrix.TRISTATE),
               key=_backends_fastest)


def node_options(case, target):
    """n0 carries the case's options; a format node gets an inline protocol child p0."""
    if case.fmt == "proto":
        return target.node("n0", **case.options())
    return {"driver": case.fmt, "node-name": "n0", **case.options(), "file": target.node("p0")}


@pytest.mark.parametrize("case", CASES)
def test_open(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    # Opening and closing never writes or stops anything: the module's cases share targets,
    # and blockdev-add cases share a running QEMU per target (hot-plug, as libvirt does).
    target = targets.shared(case.backend, case.storage, "raw" if case.fmt == "proto" else case.fmt)
    opts = node_options(case, target)
    qb_evidence.note(case=case.describe(), options=opts)
    expected = expectations.expect_open(case, target, qemu_caps)
    what = f"open {case.id} [build {qemu_build.name}]"

    if case.interface == "qmp":
        vm = targets.hotplug_qemu(target)
        observed = drive.add_node(vm, opts, target)
        outcome.check(expected, observed, what=f"open {case.id}", build=qemu_build.name)
        drive.assert_released(vm, target, what, "although the storage refuses writes")
        return

    observed = drive.open_node(qemu, case.interface, opts, target)
    outcome.check(expected, observed, what=f"open {case.id}", build=qemu_build.name)
    if target.readonly:
        drive.assert_untouched(qemu, target, what, "although the storage refuses writes")


#: one NBD server of each kind (unix socket: the transport does not change the message)
RO_EXPORTS = [(b, s) for b, s in _BACKENDS if b.startswith("nbd-") and b.endswith("-unix") and s == "ro"]


@pytest.mark.parametrize("case", matrix.cases(backend_storage=RO_EXPORTS, fmt=["proto"], interface=["qmp"],
                                              ro=[False], aro=[False], variant=["export_message"]))
def test_read_only_export_message(case, targets, qemu_build, qemu_caps, qb_evidence):
    """The message of a refused read-write open of a read-only NBD export, per server kind:
    the one case that carries known bug nbd-ro-export-message-lost (the matrix above matches
    the current text)."""
    target = targets.shared(case.backend, case.storage, "raw")
    opts = node_options(case, target)
    qb_evidence.note(case=case.describe(), options=opts)
    checks = outcome.CaseCheck("open", case.id, build=qemu_build.name, caps=qemu_caps)
    vm = targets.hotplug_qemu(target)
    checks.step(expectations.expect_read_only_export_message(), drive.add_node(vm, opts, target),
                what=f"open {case.id}")
    drive.assert_released(vm, target, f"open {case.id} [build {qemu_build.name}]",
                          "although the export is read-only")
    checks.finish()
