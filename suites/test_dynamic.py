"""Dynamic auto-read-only: file-posix's fd follows the writers that come and go.

A raw node ``fmt0`` over a file node ``f0`` with ``auto-read-only=on`` keeps
``ro=false`` and an O_RDONLY fd until a writer attaches to ``fmt0``: a
writable NBD export (``block-export-add``, ``nbd-server-add``) or a
read-write guest device (scsi-hd, virtio-blk-pci, on the arch's device
machine: ``-M pc``, ``-M virt``; ``qemu/arch.py``). The fd is
O_RDWR while one is there and O_RDONLY again after the last one has left
(waited for: BLOCK_EXPORT_DELETED / DEVICE_DELETED). Each case is one
sequence of steps; after every step, refused ones too, the suite checks the
step's outcome (exact error text), both nodes' ``ro`` and the access mode of
QEMU's fd, against ``expectations/dynamic_aro.py``, which plays the same
sequence through the rules of file-posix and the permission system.

On storage that refuses writes the writer is refused with the storage's
error, and the node stays usable read-only (a read-only export serves the
image's bytes); flipping the storage to writable lets the writer in.

QEMU's image locks must follow the permissions, not only the fd: after every
step the suite reads them whole (QEMU's fdinfo) and opens the image from a
second process where they changed or the storage flipped (``qemu-io``
read-write, without ``-U``; after the open also ``qemu-img info``, or
``qemu-io -r`` on read-only storage, and for qcow2 the force-share ``-U``
ones), against ``expectations/locks.py``; on read-only storage a read-write
probe meets the storage's refusal before any lock. qcow2 variants (fmt0 qcow2: the format node itself
writes, so the fd is O_RDWR from the start and a second process is refused
even a read-only open) run the sequences whose lock state says something new.
"""
import pytest

from pytest_qemublock.expectations import dynamic_aro as dynamic
from pytest_qemublock.scenario import matrix, outcome
from pytest_qemublock.scenario.steps import PROBES, QEMU_IMG_INFO, QEMU_IO_RO, QEMU_IO_RW
from pytest_qemublock.scenario.writers import (
    Attach,
    Detach,
    Flip,
    ReadExport,
    Reopen,
    WriterBench,
    export,
    export_ro,
    nbd_add,
    scsi_cd,
    scsi_hd,
    virtio_blk,
)

pytestmark = [pytest.mark.dynamic,
              pytest.mark.qemu_requires(feature="BlockdevOptions.file:dynamic-auto-read-only")]


def cycle(user, times=2):
    """Attach and detach *user* *times* times (a re-attach must behave like the first)."""
    return [Attach(user), Detach(user.id)] * times


def refused(user):
    """On read-only storage: the writer is refused; a read-only export still serves the image."""
    return [Attach(user), Attach(export_ro("r1")), ReadExport("r1"), Detach("r1")]


def pair(a, b):
    """Two users, then both detach orders: a+b, first-attached leaves first (fifo); a+b again,
    last-attached leaves first (lifo)."""
    return [Attach(a), Attach(b), Detach(a.id), Detach(b.id),
            Attach(a), Attach(b), Detach(b.id), Detach(a.id)]


E1, E2, N1, R1 = export("e1"), export("e2"), nbd_add("n1"), export_ro("r1")
HD0, HD1 = scsi_hd("sd0"), scsi_hd("sd1")
HD0_SHARED, HD1_SHARED = scsi_hd("sd0", share_rw=True), scsi_hd("sd1", share_rw=True)
CD0 = scsi_cd("cd0")

#: variant -> steps, on writable storage
RW_SEQUENCES = {
    # one user
    "export": cycle(E1),
    "nbd-server-add": cycle(N1),
    "scsi-hd": cycle(HD0),
    # virtio-blk-pci never finishes device_del without a guest: attach only
    "virtio-blk": [Attach(virtio_blk("vb0"))],
    "export-ro": [Attach(R1), ReadExport("r1"), Detach("r1")],
    "scsi-cd": cycle(CD0, 1),
    # two writers, both detach orders (devices next to another writer need share-rw=on)
    "export+export": pair(E1, E2),
    "export+nbd-server-add": pair(E1, N1),
    "export+hd-share": pair(E1, HD0_SHARED),
    "hd-share+export": pair(HD0_SHARED, E1),
    "hd-share+hd-share": pair(HD0_SHARED, HD1_SHARED),
    "export+virtio-blk-share": [Attach(E1), Attach(virtio_blk("vb0", share_rw=True)), Detach("e1")],
    # permission conflicts: a device without share-rw=on next to another writer
    "export+hd": [Attach(E1), Attach(HD0), Detach("e1"), *cycle(HD0, 1)],
    "hd+export": [Attach(HD0), Attach(E1), Detach("sd0"), *cycle(E1, 1)],
    "hd-share+hd": [Attach(HD0_SHARED), Attach(HD1), Detach("sd0")],
    # readers next to writers: a read-only export shares everything, scsi-cd does not share WRITE
    "export-ro+export": [Attach(R1), Attach(E1), ReadExport("r1"), Detach("e1"), Detach("r1")],
    "scsi-cd+export": [Attach(CD0), Attach(E1), Detach("cd0"), *cycle(E1, 1)],
    # blockdev-reopen of f0 combined with writers
    "reopen-aro-on-under-export": [Attach(E1), Reopen(False, True), Detach("e1"), *cycle(E1, 1)],
    "reopen-aro-on-under-scsi-hd": [Attach(HD0), Reopen(False, True), Detach("sd0")],
    "reopen-aro-off-under-export": [Attach(E1), Reopen(False, False), Detach("e1"), *cycle(E1, 1),
                                    Reopen(False, True), *cycle(E1, 1)],
    "reopen-ro-under-export": [Attach(E1), Reopen(True, True), Detach("e1"), Reopen(True, True)],
    "reopen-ro-then-writers": [Reopen(True, True), Attach(E1), Attach(N1), Attach(HD0),
                               Attach(virtio_blk("vb0")), Reopen(False, True), *cycle(E1, 1)],
    "reopen-aro-off-then-aro-on": [Reopen(False, False), *cycle(HD0, 1), Reopen(False, True),
                                   *cycle(HD0, 1)],
}

#: variant -> steps, on storage that refuses writes (erofs, eacces)
RO_SEQUENCES = {
    "export-refused": refused(E1),
    "nbd-server-add-refused": refused(N1),
    "scsi-hd-refused": refused(HD0),
    "virtio-blk-refused": refused(virtio_blk("vb0")),
    "export-ro": [Attach(R1), ReadExport("r1"), Detach("r1")],
    "scsi-cd": cycle(CD0, 1),
    # the storage accepts writes for a while: the writer gets in, and is refused again after
    "flip-export": [Attach(E1), Flip(True), *cycle(E1, 1), Flip(False), *refused(E1)],
    "flip-scsi-hd": [Attach(HD0), Flip(True), *cycle(HD0, 1), Flip(False), *refused(HD0)],
    # a reopen to a static read-write node needs O_RDWR as well (and resets aro to off)
    "reopen-aro-off-refused": [Reopen(False, False), Attach(R1), ReadExport("r1"), Detach("r1"),
                               Reopen(False, True), *refused(E1)],
}

#: the sequences run with a qcow2 fmt0 too (writable storage): fmt0 writes itself, so the fd
#: never goes back to O_RDONLY, a reopen to read-only is refused and the locks never change
QCOW2_VARIANTS = ["export", "export-ro", "scsi-hd", "scsi-cd", "hd+export", "reopen-ro-under-export",
                  "reopen-aro-off-under-export", "reopen-aro-off-then-aro-on"]

SEQUENCES = {**RW_SEQUENCES, **RO_SEQUENCES}
RO_STORAGES = [p for p in matrix.backend_storages(["file"]) if p[1] != "rw"]

CASES = (matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"], variant=RW_SEQUENCES)
         + matrix.cases(backend_storage=RO_STORAGES, fmt=["raw"], variant=RO_SEQUENCES)
         + matrix.cases(backend_storage=[("file", "rw")], fmt=["qcow2"], variant=QCOW2_VARIANTS))


@pytest.fixture
def bench(case, qemu, targets, qemu_tools):
    """The QEMU with fmt0 -> f0 for this case; its NBD listening socket is closed after."""
    target = targets.target(case.backend, case.storage, case.fmt)
    b = WriterBench(qemu, target, qemu_tools, targets.server_ctx.sockdir, fmt=case.fmt)
    yield b
    b.close()


def opening_probes(case):
    """The second processes run after the open. A qcow2 fmt0 holds WRITE from the start and the
    tools' qcow2 node shares no write on its file: every probe, -U ones included, says
    something. A raw one holds nothing yet: qemu-io read-write and qemu-img info; on read-only
    storage qemu-io -r instead of qemu-img info (the read-write one meets the storage first)."""
    if case.fmt == "qcow2":
        return list(PROBES)
    return [QEMU_IO_RW, QEMU_IMG_INFO if case.storage == "rw" else QEMU_IO_RO]


@pytest.mark.parametrize("case", CASES)
def test_dynamic(case, qemu_build, qemu_caps, qb_evidence, request):
    steps = SEQUENCES[case.variant]
    reason = dynamic.missing(steps, qemu_caps, qemu_build.arch)
    if reason:
        pytest.skip(f"build {qemu_build.name}: {reason}")
    bench = request.getfixturevalue("bench")
    model = dynamic.Model(bench.target, qemu_caps, fmt=case.fmt)
    qb_evidence.note(case=case.describe(), steps=[str(s) for s in steps])
    checks = outcome.CaseCheck("dynamic", case.id, build=qemu_build.name, caps=qemu_caps,
                               context=f"{bench.describe()}, case {case.id}")
    context = checks.context

    # A second process after the open, and afterwards only where what it meets changed (the
    # locks, or the storage flipped; a probe costs ~15 ms); the lock ranges after every step.
    got = bench.state()
    got.others = bench.others(opening_probes(case))
    checks.step(model.expect(True, "file-posix with auto-read-only=on opens O_RDONLY and keeps "
                                   "ro=false until a writer attaches (block/file-posix.c "
                                   "raw_open_common); a qcow2 fmt0 takes WRITE on f0 itself "
                                   "(block.c bdrv_default_perms_for_metadata)"),
                got, what="after open")
    for n, step in enumerate(steps, 1):
        expected = model.step(step)
        before = got.locks
        got = bench.run(step)
        if got.locks != before or isinstance(step, Flip):
            got.others = bench.others([QEMU_IO_RW])
        if checks.step(expected, got, what=f"step {n} ({step})"):
            model.bug_seen(expected.bug)

    # No step writes data (no guest runs, nobody writes through the exports): the image,
    # on read-only storage or not, must be bit-identical.
    assert bench.target.image.unchanged(), (
        f"{case.id} [build {qemu_build.name}; {context}]: {bench.target.image.path} changed, "
        f"expected it bit-identical (no step writes data)")
    checks.finish()
