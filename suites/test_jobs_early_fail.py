"""A block-commit (or block-stream) that fails early leaves the base (top) read-only.

On the jobs chain (suites/test_jobs.py: base-fmt and mid-fmt read-only=on,
file nodes auto-read-only=on) a ``block-commit`` of mid into base gets an
argument that commit_start refuses after it reopened the base read-write
(an invalid or a duplicate ``filter-node-name``) or before (a negative
``speed``); an active ``block-commit`` of top into base gets the same
arguments, all refused after its reopen; so does ``block-stream`` into a
read-only top, which reopens top first. Each time: the exact error, base-fmt ``ro=true`` and its file's
fd O_RDONLY again, no job left, and every layer bit-identical once QEMU quit.
"""
import pytest

from pytest_qemublock.expectations import commit_early
from pytest_qemublock.scenario import chains, matrix, outcome

pytestmark = [pytest.mark.jobs,
              pytest.mark.qemu_requires(feature="BlockdevOptions.file:dynamic-auto-read-only"),
              pytest.mark.qemu_requires(command="block-commit")]

CASES = matrix.cases(backend_storage=matrix.backend_storages(["file"]), fmt=["chain"],
                     variant=[v if v.startswith("stream-") else f"commit-{v}" for v in commit_early.VARIANTS])


@pytest.mark.parametrize("case", CASES)
def test_job_fails_early_layer_stays_read_only(case, qemu, qemu_build, qemu_caps, qemu_tools, targets,
                                                  qb_evidence):
    variant = case.variant.removeprefix("commit-")
    if variant.startswith("stream-") and not qemu_caps.has_command("block-stream"):
        pytest.skip(f"build {qemu_build.name} has no QMP command block-stream")
    chain = chains.make_chain(targets, qemu_tools, case.storage)
    sums = {layer: img.sha256() for layer, img in chain.images.items()}
    args = chains.blockdev_args(chain, top_ro=commit_early.top_read_only(variant, chain, qemu_caps))
    qb_evidence.note(case=case.describe(), chain=chain.describe())
    build = qemu_build.name
    vm = qemu.start(*args, wrapper=chain.storage.wrapper)
    outcome.check(commit_early.opened(variant, chain, qemu_caps), chains.state(vm, chain),
                  what=f"open {chain.describe()} ({case.id})", build=build)

    arguments = commit_early.arguments(variant)
    command = commit_early.command(variant)
    err = vm.execute_error(command, arguments)
    outcome.check(commit_early.refused(variant, chain, qemu_caps), chains.state(vm, chain, err),
                  what=f"{command} {arguments} ({case.id})", build=build)
    jobs = chains.block_jobs(vm)
    assert jobs == [], f"{case.id} [build {build}]: {command} {arguments} failed but left jobs {jobs}"

    problems = qemu.shutdown_all()
    assert not problems, "\n".join(problems)
    changed = [layer for layer, img in chain.images.items() if img.sha256() != sums[layer]]
    assert not changed, (f"{case.id} [build {build}]: layers {changed} of {chain.describe()} changed "
                         f"although {command} {arguments} was refused")
