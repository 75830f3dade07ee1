"""What an NBD client sees of an export of a read-only node (the defaults scenario).

A read-only raw node exported over QMP with ``writable`` left out, off or on:
``nbd-server-add`` exports it read-only, silently even when asked for a writable
export; ``block-export-add`` refuses writable=on. A client then sees the
export's flags (``qemu-nbd -L``: readonly, no trim / write-zeroes) and a second
process is refused a read-write open while a read-only one opens it.
Writable nodes: ``test_defaults.py::test_export_writable_default``.
"""
import json

import pytest

from pytest_qemublock.expectations import defaults
from pytest_qemublock.scenario import drive, exports, matrix, outcome

pytestmark = pytest.mark.defaults

QMP_EXPORTS = {e.id: e for e in defaults.EXPORT_DEFAULTS
               if e.interface in ("nbd-server-add", "block-export-add")}


@pytest.mark.parametrize("case", matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                                              variant=list(QMP_EXPORTS)))
def test_export_of_read_only_node(case, targets, qemu, qemu_build, qemu_caps, qemu_tools, qb_evidence):
    exp = QMP_EXPORTS[case.variant]
    if not qemu_caps.has_command(exp.interface):
        pytest.skip(f"build {qemu_build.name} has no QMP command {exp.interface}")
    target = targets.target("file", "rw", "raw")
    node = {"driver": "raw", "node-name": "n0", "read-only": True, "file": target.node("f0")}
    qb_evidence.note(case=case.describe(), node=node)
    vm = qemu.start("-blockdev", json.dumps(node))
    view = exports.qmp_export(vm, exp.interface, exp.writable, targets.server_ctx.sockdir, qemu_tools)
    rule = defaults.expect_read_only_node_export(exp)
    what = f"{exp.interface} writable={exp.writable} of read-only node n0 ({case.id})"
    if isinstance(view, exports.ClientView):
        got = drive.state(vm, ("n0",), {})
    else:
        got = drive.qmp_failed(view, vm)
    outcome.check(rule, got, what=what, build=qemu_build.name)
    if isinstance(view, exports.ClientView):
        problems = view.mismatches(defaults.export_flags(False), defaults.client_others(False, view.url))
        assert not problems, (f"{what} [build {qemu_build.name}]: a client of {view.url}: "
                              + "; ".join(problems) + f"\n  because:  {rule.because}")
