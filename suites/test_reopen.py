"""Reopen: blockdev-reopen between read-only and read-write, and back.

* the start-state x target table on writable and read-only
  storage, with and without auto-read-only: each case reopens to the target
  and then back to the options it was opened with; options left out reset to
  their defaults (a reopen saying only ``read-only=false`` turns
  auto-read-only off, so it fails on read-only storage);
* per-driver refusals (a read-only NBD export cannot be reopened read-write,
  auto-read-only or not);
* after a refused reopen the node is unchanged (ro flag, fd mode) and still
  reads the image's pattern;
* a qcow2 node over a separate auto-read-only protocol node (libvirt's layout);
* the storage flip: degraded on read-only storage, storage made writable,
  reopened read-write (O_RDWR), written, reopened read-only, storage made
  read-only again, read-write refused again;
* on file backends, QEMU's image locks after every step (``/proc/locks``):
  none for a protocol node nobody uses, whatever its flags (so a second
  process, read-write or ``-r``, meets only the storage: refused read-write on
  read-only storage, allowed elsewhere); the qcow2 node's
  own under it, and a second process (qemu-io read-write and ``-r``,
  qemu-img info, the read-only ones with and without ``-U``) opening the
  image where they changed, on every storage (read-only storage refuses the
  read-write one before any lock).

The file backends and one NBD server (qemu-nbd over unix) run the whole
table; every other NBD pair runs its sharpest case (the transport and server
kind do not change what reopen does).
"""
import json

import pytest

from pytest_qemublock.backends import registry
from pytest_qemublock.backends.base import READONLY_KINDS
from pytest_qemublock.expectations import reopen as rules
from pytest_qemublock.host.process import ProcessError, describe_status
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.scenario.outcome import IMAGE
from pytest_qemublock.scenario.steps import PROBES, QEMU_IO_RO, QEMU_IO_RW
from pytest_qemublock.storage.images import Pattern

pytestmark = pytest.mark.reopen

#: variant -> the options blockdev-reopen gets besides driver/node-name/location
TARGETS = {
    "to_rw": {"read-only": False, "auto-read-only": False},
    "to_rw-aro_omitted": {"read-only": False},
    "to_rw-aro_on": {"read-only": False, "auto-read-only": True},
    "to_ro": {"read-only": True},
    "to_defaults": {},
}

FULL_PAIRS = [p for p in matrix.backend_storages() if p[0] in ("file", "nbd-qemu-nbd-unix")]
REST_PAIRS = [p for p in matrix.backend_storages() if p not in FULL_PAIRS]


def _opens(param):
    """Drop start states that cannot open (read-write, no auto-read-only, read-only storage):
    those are open-scenario cases, there is nothing to reopen."""
    case = param.values[0]
    return not (case.storage in READONLY_KINDS and case.ro is False
                and (case.aro is False or not registry.driver_of(case.backend).degrades))


def _table():
    starts = (matrix.cases(backend_storage=FULL_PAIRS, fmt=["proto"], ro=[False], aro=[False, True],
                           variant=list(TARGETS))
              + matrix.cases(backend_storage=FULL_PAIRS, fmt=["proto"], ro=[True], aro=[None],
                             variant=list(TARGETS)))
    rest = (matrix.cases(backend_storage=[p for p in REST_PAIRS if p[1] == "ro"], fmt=["proto"],
                         ro=[False], aro=[True], variant=["to_rw-aro_on"])
            + matrix.cases(backend_storage=[p for p in REST_PAIRS if p[1] == "rw"], fmt=["proto"],
                           ro=[True], aro=[None], variant=["to_rw-aro_omitted"]))
    return sorted(filter(_opens, starts + rest), key=lambda p: p.id)


TABLE = _table()


def where(target, case):
    return f"on {target.describe()} ({case.id})"


def locked(got, vm, target):
    """*got* plus QEMU's locks on the image (file backends: the only ones with locks)."""
    if target.driver == "file" and not got.died:
        got.locks[IMAGE] = drive.image_locks(vm, target.fd_path)
    return got


def start_state(target, caps, start):
    return rules.no_locks(rules.expect_start(target, caps, start), target)


def refused_keeps(exp, current, opts):
    """A refused reopen must leave the node as it was: *exp* with *current*'s state."""
    if exp.ok:
        return exp
    kept = rules.unchanged(current, f"{rules.describe(opts)} was refused")
    return exp.replace(ro=kept.ro, fds=kept.fds, locks=kept.locks, others=kept.others,
                       because=f"{exp.because}; {kept.because}")


def check_reopen(vm, target, caps, build, current, opts, *, what):
    """Reopen n0 to *opts*, check the outcome and, if refused, that nothing changed.
    Returns the expected state afterwards."""
    exp = rules.no_locks(rules.expect_reopen(target, caps, current, opts), target)
    attempt = locked(drive.reopen_node(vm, target.node("n0", **opts), target), vm, target)
    outcome.check(refused_keeps(exp, current, opts), attempt, what=what, build=build)
    return exp if exp.ok else current


def check_reads(vm, target, what, build):
    pattern = target.image.patterns[0]
    read = drive.hmp_qemu_io(vm, "n0", f"read {pattern.io_args()}")
    assert read.pattern_ok, (
        f"read back n0 {what} [build {build}]: expected pattern {pattern.io_args()}\n"
        f"  because:  {rules.STILL_USABLE}\n"
        f"  QEMU did: {read.describe()}")


@pytest.mark.qemu_requires(command="blockdev-reopen")
@pytest.mark.parametrize("case", TABLE)
def test_reopen_and_back(case, targets, qemu, qemu_build, qemu_caps, qemu_tools, qb_evidence):
    target = targets.target(case.backend, case.storage, "raw")
    start, to = case.options(), TARGETS[case.variant]
    build = qemu_build.name
    qb_evidence.note(case=case.describe(), start=start, reopen=to)
    vm = qemu.start(wrapper=target.wrapper)
    current = start_state(target, qemu_caps, start)
    got = locked(drive.add_node(vm, target.node("n0", **start), target), vm, target)
    if target.driver == "file" and got.ok:
        # the locks never change here (n0 has no parent): a second process once, after the add
        got.others = {p: drive.other_process(qemu_tools, p, "raw", target.fd_path, target.wrapper.prefix)
                      for p in (QEMU_IO_RW, QEMU_IO_RO)}
    outcome.check(current, got, what=f"blockdev-add n0 {rules.describe(start)} {where(target, case)}",
                  build=build)

    for step, opts in (("blockdev-reopen", to), ("blockdev-reopen back", start)):
        current = check_reopen(
            vm, target, qemu_caps, build, current, opts,
            what=f"{step} n0 to {rules.describe(opts)} (opened {rules.describe(start)}) "
                 f"{where(target, case)}")

    check_reads(vm, target, f"after the reopens {where(target, case)}", build)
    if target.readonly:
        drive.assert_untouched(qemu, target, f"{case.id} [build {build}]",
                                 "although the storage refuses writes")


@pytest.mark.qemu_requires(command="blockdev-reopen")
@pytest.mark.parametrize("case", matrix.cases(backend_storage=FULL_PAIRS, fmt=["qcow2"],
                                              variant=["rw_and_back"]))
def test_reopen_format_node_over_auto_read_only_child(case, targets, qemu, qemu_build, qemu_caps,
                                                      qemu_tools, qb_evidence):
    """qcow2 ``n0`` read-only=on over a separate ``p0`` (read-only=off, auto-read-only=on)."""
    target = targets.target(case.backend, case.storage, "qcow2")
    build = qemu_build.name
    child = target.node("p0", **{"read-only": False, "auto-read-only": True})
    fmt = {"driver": "qcow2", "node-name": "n0", "file": "p0"}
    qb_evidence.note(case=case.describe(), child=child, node=fmt)
    vm = qemu.start(wrapper=target.wrapper)
    vm.execute("blockdev-add", child)
    # every second process where the locks changed (file backends), on any storage: read-only
    # storage refuses the read-write one first; -U gets past a qcow2 writer's locks
    probing = target.driver == "file"

    def observed(got, before=None):
        got = locked(got, vm, target)
        if probing and got.locks != before:
            prefix = target.wrapper.prefix
            got.others = {p: drive.other_process(qemu_tools, p, "qcow2", target.fd_path, prefix)
                          for p in PROBES}
        return got

    current = rules.expect_format_start(target, qemu_caps)
    got = observed(drive.add_node(vm, {**fmt, "read-only": True}, target))
    outcome.check(current, got,
                  what=f"blockdev-add qcow2 n0 read-only=true over p0 (auto-read-only=on) "
                       f"{where(target, case)}",
                  build=build)

    for ro in (False, True):
        exp = rules.expect_format_reopen(target, qemu_caps, ro)
        what = f"blockdev-reopen qcow2 n0 to read-only={str(ro).lower()} over p0 {where(target, case)}"
        got = observed(drive.reopen_node(vm, {**fmt, "read-only": ro}, target), got.locks)
        outcome.check(refused_keeps(exp, current, {"read-only": ro}), got, what=what, build=build)
        current = exp if exp.ok else current

    check_reads(vm, target, f"after the reopens {where(target, case)}", build)
    if target.readonly:
        drive.assert_untouched(qemu, target, f"{case.id} [build {build}]",
                                 "although the storage refuses writes")


#: written once the storage accepts writes; the recipe's own pattern is 0x5a at 0..64k
FLIP_WRITE = Pattern(0x77, "64k", "64k")


@pytest.mark.qemu_requires(command="blockdev-reopen")
@pytest.mark.parametrize("case", matrix.cases(
    backend_storage=[("file", "erofs"), ("file", "eacces")], fmt=["proto"], ro=[False], aro=[True],
    variant=["storage_flip"]))
def test_reopen_follows_storage_flip(case, targets, qemu, qemu_build, qemu_caps, qb_evidence, images):
    target = targets.target(case.backend, case.storage, "raw")
    build = qemu_build.name
    start = case.options()
    rw, ro = TARGETS["to_rw"], TARGETS["to_ro"]
    qb_evidence.note(case=case.describe(), start=start)
    vm = qemu.start(wrapper=target.wrapper)
    current = start_state(target, qemu_caps, start)
    outcome.check(current, locked(drive.add_node(vm, target.node("n0", **start), target), vm, target),
                  what=f"blockdev-add n0 {rules.describe(start)} {where(target, case)}", build=build)

    target.make_writable()
    current = check_reopen(vm, target, qemu_caps, build, current, rw,
                           what=f"blockdev-reopen n0 to {rules.describe(rw)} after make_writable() "
                                f"{where(target, case)}")
    wrote = locked(drive.qemu_io_write(vm, "n0", FLIP_WRITE, target), vm, target)
    outcome.check(rules.expect_write_after_flip(current), wrote,
                       what=f"hmp qemu-io write {FLIP_WRITE.io_args()} to n0 {where(target, case)}",
                       build=build)
    current = check_reopen(vm, target, qemu_caps, build, current, ro,
                           what=f"blockdev-reopen n0 to {rules.describe(ro)} before make_readonly() "
                                f"{where(target, case)}")
    try:
        target.make_readonly()
    except Exception as e:  # noqa: BLE001 - e.g. the erofs remount failing with EBUSY
        raise AssertionError(
            f"make_readonly() {where(target, case)} [build {build}] failed: {e}\n"
            f"  because:  {rules.FLIP_BACK}: an EBUSY here means QEMU still holds an O_RDWR fd "
            f"although n0 was reopened read-only") from None
    for opts in (rw, start):
        current = check_reopen(vm, target, qemu_caps, build, current, opts,
                               what=f"blockdev-reopen n0 to {rules.describe(opts)} after make_readonly() "
                                    f"{where(target, case)}")

    check_reads(vm, target, f"after the flips {where(target, case)}", build)
    problems = qemu.shutdown_all()
    assert not problems, problems
    for pattern in (FLIP_WRITE, *target.image.patterns):
        assert images.verify(target.image, pattern), (
            f"{case.id} [build {build}]: {target.image.path} does not hold {pattern.io_args()} "
            f"after the write through the reopened node")


@pytest.mark.qemu_requires(command="blockdev-reopen")
@pytest.mark.parametrize("case", matrix.cases(
    backend_storage=[("file", "rw")], fmt=["proto"], ro=[False], aro=[False],
    variant=["same_options_then_ro"]))
def test_reopen_read_only_after_unchanged_reopen(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    """A reopen that changes nothing, then read-only=true: the fd must become O_RDONLY."""
    target = targets.target(case.backend, case.storage, "raw")
    build = qemu_build.name
    start = case.options()
    checks = outcome.CaseCheck("reopen", case.id, build=build, caps=qemu_caps)
    vm = qemu.start(wrapper=target.wrapper)
    current = start_state(target, qemu_caps, start)
    outcome.check(current, locked(drive.add_node(vm, target.node("n0", **start), target), vm, target),
                  what=f"blockdev-add n0 {rules.describe(start)} {where(target, case)}", build=build)
    current = check_reopen(vm, target, qemu_caps, build, current, start,
                           what=f"blockdev-reopen n0 to the same {rules.describe(start)} "
                                f"{where(target, case)}")
    ro = TARGETS["to_ro"]
    checks.step(rules.no_locks(rules.expect_read_only_after_unchanged(target, qemu_caps, current), target),
                locked(drive.reopen_node(vm, target.node("n0", **ro), target), vm, target),
                what=f"blockdev-reopen n0 to {rules.describe(ro)} after an unchanged reopen "
                     f"{where(target, case)}")
    checks.finish()


@pytest.mark.parametrize("command", ["blockdev-reopen", "x-blockdev-reopen"])
def test_reopen_commands_match_probe(command, qemu, qemu_build, qemu_caps):
    """The capability the reopen tests are guarded by says what QEMU really accepts
    (x-blockdev-reopen existed in 4.0-6.0 only; e60edf69e2 dropped the prefix).

    The arguments are of the wrong type on purpose: QEMU answers CommandNotFound
    for an unknown command and a type error for a known one, without running it.
    """
    vm = qemu.start()
    err = vm.execute_error(command, {"options": "not-a-list"})
    missing = err is not None and err.error_class == "CommandNotFound"
    probed = qemu_caps.has_command(command)
    assert missing != probed, (
        f"{command} [build {qemu_build.name}]: the probe says it is "
        f"{'present' if probed else 'absent'}, but QEMU answered "
        f"{json.dumps({'class': err.error_class, 'desc': err.desc}) if err else 'success'}")


@pytest.mark.qemu_requires(command="blockdev-reopen")
def test_reopen_of_nothing_is_answered(qemu, qemu_build, qemu_caps):
    """``blockdev-reopen`` with an empty options list is valid QAPI; QEMU must answer it
    (success or an error), not abort."""
    checks = outcome.CaseCheck("reopen", "empty_options_list", build=qemu_build.name, caps=qemu_caps)
    vm = qemu.start()
    try:
        answer = vm.try_execute("blockdev-reopen", {"options": []})
    except ProcessError:
        got = drive.died(qemu, vm)  # QEMU died: this test's finding (or the known bug's)
    else:
        got = outcome.Outcome(not isinstance(answer, Exception), detail=f"answered {answer}")
        if not vm.alive():
            got.died, got.stderr = describe_status(vm.proc.returncode), vm.proc.stderr_text(4000)
    checks.step(rules.expect_empty_reopen(), got, what='blockdev-reopen {"options": []}')
    checks.finish()
