"""Block jobs that must reopen a read-only layer read-write, and give it back.

The chain base <- mid <- top (qcow2, one storage) is opened node by node as
libvirt does (iotest 247): every file node ``auto-read-only=on``, base-fmt
and mid-fmt ``read-only=on``. Then one job runs:

* ``block-commit`` of mid into base (reopens base read-write while it runs),
  completed or cancelled;
* ``block-stream`` into a read-only top (reopens top read-write);
* an active ``block-commit`` of top into base, completed (base stays
  read-write: it is the new active layer) or cancelled, after READY or
  before.

The "during" state is caught deterministically: the reopen happens inside
the command, and jobs that would finish at once run with ``speed=1`` until
``block-job-set-speed 0`` (or the cancel). After the job's event the nodes
and fds are checked again, no job may be left, and once QEMU has quit the
data is read back with the build's qemu-io (each recipe pattern at its
offset) and the untouched layers are compared bit for bit. After every step
QEMU's image locks per layer are read from ``/proc/locks``, and ``qemu-img
info`` (no ``-U``) opens each layer whose locks changed: refused while its
qcow2 node is read-write, allowed again once the job gave it back; where it
is refused, ``qemu-img info -U`` (force-share) opens it all the same.

On storage that refuses writes (erofs, eacces) every job fails cleanly with
the storage's error, no job is left and every layer is bit-identical; a base
*file* node with ``read-only=on`` gives ``Block node is read-only`` anywhere.
"""
from pathlib import Path

import pytest

from pytest_qemublock.expectations import jobs
from pytest_qemublock.scenario import chains, matrix, outcome

pytestmark = [pytest.mark.jobs,
              pytest.mark.qemu_requires(feature="BlockdevOptions.file:dynamic-auto-read-only")]

FILE_STORAGES = matrix.backend_storages(["file"])  # chains are files: no NBD here

CASES = sorted(
    matrix.cases(backend_storage=FILE_STORAGES, fmt=["chain"], variant=jobs.ALL_STORAGES)
    + matrix.cases(backend_storage=[("file", "rw")], fmt=["chain"], variant=jobs.RW_ONLY),
    key=lambda p: p.id)


def drive(vm, plan):
    """End the running job the way *plan* says; wait (with a timeout) for its event."""
    for action in plan.finish:
        if action == "set-speed-0":
            vm.execute("block-job-set-speed", {"device": plan.job, "speed": 0})
        elif action == "ready":
            vm.wait_event("BLOCK_JOB_READY", {"device": plan.job}, timeout=vm.timeouts.event)
        elif action == "complete":
            vm.execute("block-job-complete", {"device": plan.job})
        elif action == "cancel":
            vm.execute("block-job-cancel", {"device": plan.job})
        else:
            raise ValueError(f"unknown finish action {action!r}")
    return vm.wait_event(plan.event, {"device": plan.job}, timeout=vm.timeouts.event)


@pytest.mark.parametrize("case", CASES)
def test_job(case, qemu, qemu_build, qemu_caps, qemu_tools, targets, qb_evidence, request):
    reason = jobs.missing(case.variant, qemu_caps)
    if reason:
        pytest.skip(f"build {qemu_build.name}: {reason}")
    chain = chains.make_chain(targets, qemu_tools, case.storage)
    rules = jobs.Rules(case.variant, chain, qemu_caps)
    layout = rules.layout()
    args = chains.blockdev_args(chain, top_ro=layout.top_ro, base_file=layout.base_file)
    qb_evidence.note(case=case.describe(), chain=chain.describe())
    build = qemu_build.name
    context = (f"{chain.describe()}, top-fmt read-only={'on' if layout.top_ro else 'off'}"
               f"{', base-file ' + str(dict(layout.base_file)) if layout.base_file else ''}, case {case.id}")

    steps = outcome.CaseCheck("jobs", case.id, build=build, caps=qemu_caps, context=context)
    vm = qemu.start(*args, wrapper=chain.storage.wrapper)
    # locks after every step; qemu-img info of each layer whose locks changed (-U where refused)
    got = chains.state_and_others(vm, chain, qemu_tools, None)
    steps.step(layout.opened, got, what="after open")

    for plan in rules.plans():
        what = plan.describe()
        err = vm.execute_error(plan.command, plan.arguments)
        got = chains.state_and_others(vm, chain, qemu_tools, got, err)
        steps.step(plan.start, got, what=f"{what} (right after the command)")
        running = chains.block_jobs(vm)
        if err is not None:
            assert running == [], (
                f"{what} [build {build}; {context}]: the command failed, so no job may exist; "
                f"query-block-jobs shows {running}")
            continue
        assert [job for job, status in running if job == plan.job and status in plan.statuses], (
            f"{what} [build {build}; {context}]: expected job {plan.job} in state "
            f"{'/'.join(plan.statuses)} while the job runs; query-block-jobs shows {running or 'no job'}")

        event = drive(vm, plan)
        assert "error" not in event["data"], (
            f"{what} [build {build}; {context}]: {plan.event} reports an error: {event['data']['error']}")
        left = chains.block_jobs(vm)
        assert left == [], (
            f"{what} [build {build}; {context}]: expected no job left after {plan.event}; "
            f"query-block-jobs shows {left}")
        # a known bug here (the base left read-write) changes nothing below: same data either way
        got = chains.state_and_others(vm, chain, qemu_tools, got)
        steps.step(plan.end, got, what=f"{what} (after {plan.event})")

    problems = qemu.shutdown_all()
    assert not problems, problems

    checks, unchanged = rules.data()
    for layer in unchanged:
        img = chain.images[layer]
        assert img.unchanged(), (
            f"{case.id} [build {build}; {context}]: {layer} ({img.path}) changed, expected it "
            f"bit-identical: {rules.unchanged_because()}")
    for check in checks:
        img = chain.images[check.layer]
        if check.pattern is not None:
            read = chains.read_pattern(qemu_tools, img, check.pattern)
            assert read.pattern_ok, (
                f"{case.id} [build {build}; {context}]: expected byte 0x{check.pattern.byte:02x} "
                f"at {check.pattern.offset}+{check.pattern.length} reading through {check.layer} "
                f"because {check.because}; {read.describe()}")
        else:
            got = chains.backing_file(qemu_tools, img)
            want = chain.images[check.backing].path.name if check.backing else None
            assert (Path(got).name if got else None) == want, (
                f"{case.id} [build {build}; {context}]: expected {check.layer}'s backing file "
                f"{want or 'none'} because {check.because}; qemu-img info says {got or 'none'}")
    steps.finish()
