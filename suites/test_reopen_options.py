"""Reopen option validation: a non-boolean read-only / auto-read-only is refused, node unchanged.

n0 (file, ``read-only=off``; ``auto-read-only=on`` where the storage refuses
writes) on writable and read-only storage is reopened with ``"qux"`` for ``auto-read-only`` or ``read-only``:
through QMP ``blockdev-reopen`` (the schema refuses the type) and through
HMP ``qemu-io n0 "reopen -o ..."`` (QemuOpts refuses the value). Afterwards
n0 has the ``ro`` flag and the fd mode it was opened with. The qemu-io
tool gets the same ``reopen -o`` and must still write afterwards (writable
storage: the node stayed read-write).
"""
import re

import pytest

from pytest_qemublock.expectations import reopen_options as rules
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.scenario.outcome import tool_message

pytestmark = [pytest.mark.reopen,
              pytest.mark.qemu_requires(feature="BlockdevOptions.file:dynamic-auto-read-only")]

FILE_STORAGES = matrix.backend_storages(["file"])
QMP_CASES = matrix.cases(backend_storage=FILE_STORAGES, fmt=["proto"],
                         variant=[f"qmp-{o}-{rules.BAD}" for o in rules.OPTIONS])
HMP_CASES = matrix.cases(backend_storage=FILE_STORAGES, fmt=["proto"],
                         variant=[f"hmp-qemu-io-{o}-{rules.BAD}" for o in rules.OPTIONS])
TOOL_CASES = matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                          variant=[f"tool-qemu-io-{o}-{rules.BAD}" for o in rules.OPTIONS])


def option_of(case):
    return next(o for o in sorted(rules.OPTIONS, key=len, reverse=True) if f"-{o}-" in f"-{case.variant}")


def opened_n0(case, targets, qemu, qemu_build):
    target = targets.target(case.backend, case.storage, "raw")
    opts = target.node("n0", **rules.node_options(target.readonly))
    got = drive.open_node(qemu, "blockdev", opts, target)
    outcome.check(rules.opened(target.readonly), got, what=f"-blockdev {opts} ({case.id})",
                  build=qemu_build.name)
    return target, opts, got.vm


@pytest.mark.qemu_requires(command="blockdev-reopen")
@pytest.mark.parametrize("case", QMP_CASES)
def test_blockdev_reopen_rejects_non_boolean(case, targets, qemu, qemu_build):
    target, opts, vm = opened_n0(case, targets, qemu, qemu_build)
    option = option_of(case)
    bad = {**opts, option: rules.BAD}
    got = drive.reopen_node(vm, bad, target, interface="blockdev")
    outcome.check(rules.qmp_refused(option, target.readonly), got,
                  what=f"blockdev-reopen {bad} ({case.id})", build=qemu_build.name)
    drive.assert_untouched(qemu, target, f"{case.id} [build {qemu_build.name}]")


@pytest.mark.parametrize("case", HMP_CASES)
def test_hmp_qemu_io_reopen_rejects_non_boolean(case, targets, qemu, qemu_build):
    target, _, vm = opened_n0(case, targets, qemu, qemu_build)
    option = option_of(case)
    command = f"reopen -o {option}={rules.BAD}"
    res = drive.hmp_qemu_io(vm, "n0", command)
    got = drive.observe(vm, "blockdev", target, detail=res.output)
    got.ok, got.error = not res.failed, res.reply.strip() or res.output.strip()
    outcome.check(rules.qemuopts_refused(option, target.readonly), got,
                  what=f"HMP qemu-io n0 \"{command}\" ({case.id})", build=qemu_build.name)
    drive.assert_untouched(qemu, target, f"{case.id} [build {qemu_build.name}]")


@pytest.mark.parametrize("case", TOOL_CASES)
def test_qemu_io_tool_reopen_rejects_non_boolean(case, images, qemu_tools, qemu_build):
    img = images.from_recipe("raw")
    option = option_of(case)
    command = f"reopen -o {option}={rules.BAD}"
    res = qemu_tools.io("-f", "raw", "-c", command, "-c", "write -P 0x77 0 512", img.path, check=False)
    # error_report() goes to stderr, the write's result to stdout
    error = tool_message(res.stderr, "qemu-io")
    text = f"stderr {error!r}, stdout {res.stdout.strip()!r}"
    exp = rules.qemuopts_refused(option, False)
    assert re.fullmatch(exp.error, error) and "wrote 512/512 bytes at offset 0" in res.stdout, (
        f"qemu-io -c '{command}' -c 'write -P 0x77 0 512' {img.path} ({case.id}) "
        f"[build {qemu_build.name}]: expected {outcome.shown(exp.error)}, then the write to succeed "
        f"(the image stays opened read-write)\n  because:  {exp.because}\n  qemu-io printed: {text!r}")
