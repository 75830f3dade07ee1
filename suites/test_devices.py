"""Guest devices and removable media: what a device does with a read-only node.

* scsi-hd, virtio-blk-pci and scsi-cd hot-plugged onto a read-only raw node come
  up as read-only devices (query-block ``ro``, the fd stays O_RDONLY), and their
  BlockBackend cannot be made to write (HMP ``qemu-io -d``); ide-hd is refused;
* ``blockdev-change-medium`` into an empty scsi-cd with ``read-only-mode``
  left out, retain, read-only or read-write (ide-cd: left out, read-write),
  then a second medium with retain: the medium's ``ro`` and fd; on read-only
  storage a read-write medium is refused (no auto-read-only);
* a read-only node inserted into an empty scsi-cd or floppy
  (blockdev-open-tray / -insert-medium / -close-tray).

Expectations: ``pytest_qemublock/expectations/devices.py``.
"""
import json
import re

import pytest

from pytest_qemublock.expectations import devices
from pytest_qemublock.host import procfs
from pytest_qemublock.qemu.instance import LaunchError
from pytest_qemublock.scenario import drive, matrix, outcome
from pytest_qemublock.scenario.outcome import IMAGE, Outcome

pytestmark = pytest.mark.devices

#: the device's id, and the QOM path of the device whose BlockBackend it is
DEV = "dev0"
QDEV = {"virtio-blk-pci": f"/machine/peripheral/{DEV}/virtio-backend"}


#: devices of the x86 pc machine's IDE and ISA buses; other arches' device machines have none
PC_ONLY = ("ide-hd", "ide-cd", "floppy")


def _machine(qemu_caps, qemu_build, device):
    """The machine and its -device arguments for *device* on this build's arch (the arch's
    device machine: pc on x86_64, virt on aarch64; IDE and floppy devices only on pc)."""
    arch = qemu_build.arch
    machine = "pc" if device in PC_ONLY else arch.device_machine
    if device in PC_ONLY and arch.device_machine != "pc":
        pytest.skip(f"{device} is a device of the x86 pc machine's IDE/ISA buses; "
                    f"{arch.name}'s {arch.device_machine} machine has none")
    if machine not in qemu_caps.machines:
        pytest.skip(f"build {qemu_build.name} has no {machine!r} machine (needed for {device})")
    return machine, arch.device_args()


def _device_state(vm, qdev, path, err=None):
    """n0's ro, the image's fd modes and query-block's ro of the BlockBackend of *qdev*."""
    got = drive.state(vm, ("n0",), {IMAGE: path}, err)
    blks = [b for b in vm.execute("query-block") if b.get("qdev") == qdev and "inserted" in b]
    got.blk_ro = bool(blks[0]["inserted"]["ro"]) if blks else None
    return got


@pytest.mark.parametrize("case", matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                                              variant=list(devices.DEVICES)))
def test_device_on_read_only_node(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    machine, device_args = _machine(qemu_caps, qemu_build, case.variant)
    target = targets.target("file", "rw", "raw")
    node = {"driver": "raw", "node-name": "n0", "read-only": True, "file": target.node("f0")}
    dev = {"driver": case.variant, "id": DEV, "drive": "n0"}
    if case.variant == "virtio-blk-pci" and qemu_build.arch.hotplug_bus:
        dev["bus"] = qemu_build.arch.hotplug_bus  # virt's pcie.0 takes no hot-plug
    qdev = QDEV.get(case.variant, DEV)
    args = ["-blockdev", json.dumps(node), *device_args]
    qb_evidence.note(case=case.describe(), node=node, device=dev)
    exp = devices.expect_device_on_read_only_node(case.variant)
    what = f"{case.variant} on read-only node n0 ({case.id})"
    if case.variant in devices.COLD_PLUGGED:
        try:
            vm = qemu.start(*args, "-device", f"{case.variant},id={DEV},drive=n0", machine=machine,
                            wrapper=target.wrapper)
        except LaunchError as e:
            got = drive.launch_failed(e)
        else:
            got = _device_state(vm, qdev, target.fd_path)
        outcome.check(exp, got, what=f"-device {what}", build=qemu_build.name)
        return
    vm = qemu.start(*args, machine=machine, wrapper=target.wrapper)
    got = _device_state(vm, qdev, target.fd_path, vm.execute_error("device_add", dev))
    outcome.check(exp, got, what=f"device_add {what}", build=qemu_build.name)

    res = drive.hmp_qemu_io(vm, f"-d {qdev}", "write -P 0x11 0 512")
    got = _device_state(vm, qdev, target.fd_path)
    got.ok, got.error, got.detail = not res.failed, res.reply or res.output, res.describe()
    outcome.check(devices.expect_write_through_device(case.variant), got,
                  what=f"HMP qemu-io -d {qdev} write, {what}", build=qemu_build.name)
    assert target.image.unchanged(), f"{what} [build {qemu_build.name}]: the image was written"


def _medium_state(vm, qdev, path, err=None):
    """query-block's ro of the drive's medium (None: no medium) and the fd modes on *path*."""
    blks = [b for b in vm.execute("query-block") if b.get("qdev") == qdev]
    inserted = blks[0].get("inserted") if blks else None
    return Outcome(err is None, err.desc if err else "", err.error_class if err else "",
                   ro={"medium": None if inserted is None else bool(inserted["ro"])},
                   fds={IMAGE: procfs.fd_modes(vm.pid, path)}, vm=vm)


#: variant -> (drive, read-only-mode of the first medium)
CHANGES = {f"{d}-mode_{m or 'omitted'}": (d, m) for d in ("scsi-cd", "ide-cd") for m in devices.MODES}
# read-only-mode is the command's (qmp_blockdev_change_medium), not the device's: every mode on
# scsi-cd, and on ide-cd (another bus, its own tray) the default and read-write
CHANGE_CASES = (
    matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                 variant=[v for v, (d, m) in CHANGES.items() if d == "scsi-cd" or m in (None, "read-write")])
    + matrix.cases(backend_storage=[("file", "erofs")], fmt=["raw"],
                   variant=[v for v, (d, _) in CHANGES.items() if d == "scsi-cd"]))


@pytest.mark.qemu_requires(command="blockdev-change-medium")
@pytest.mark.parametrize("case", CHANGE_CASES)
def test_change_medium(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    """An empty removable drive gets medium a.raw with the case's read-only-mode, then b.raw
    with retain."""
    device, mode = CHANGES[case.variant]
    machine, device_args = _machine(qemu_caps, qemu_build, device)
    st = targets.storage(case.storage)
    for name in ("a.raw", "b.raw"):  # raw images: a sparse file is one, no qemu-img needed
        with open(st.directory / name, "wb") as f:
            f.truncate(1 << 20)
    bus = ",bus=ide.1" if device == "ide-cd" else ""
    vm = qemu.start(*device_args, "-device", f"{device},id={DEV}{bus}",
                    machine=machine, wrapper=st.wrapper)
    previous_ro = True  # the empty drive's root state: open_flags 0 (blk_new), no BDRV_O_RDWR
    for name, m in (("a.raw", mode), ("b.raw", "retain")):
        path = st.qemu_path(st.directory / name)
        refused = (rf"Could not open '{re.escape(str(path))}': {re.escape(st.error_text)}"
                   if st.readonly else None)
        args = {"id": DEV, "filename": str(path), "format": "raw"}
        if m is not None:
            args["read-only-mode"] = m
        qb_evidence.note(**{f"change_{name}": args})
        exp = devices.expect_change_medium(m, previous_ro, refused)
        got = _medium_state(vm, DEV, path, vm.execute_error("blockdev-change-medium", args))
        what = f"blockdev-change-medium {json.dumps(args)} ({case.id})"
        outcome.check(exp, got, what=what, build=qemu_build.name)
        if exp.ok:
            previous_ro = exp.ro["medium"]
        elif name == "a.raw":
            # refused before the tray opened: the drive is still empty, nothing holds the image
            assert got.ro["medium"] is None and got.fds[IMAGE] == [], (
                f"{what} [build {qemu_build.name}]: refused, but the drive has a medium "
                f"(ro={got.ro['medium']}) or QEMU an fd on it ({got.fds[IMAGE]})")


@pytest.mark.qemu_requires(command="blockdev-insert-medium")
@pytest.mark.parametrize("case", matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                                              variant=list(devices.INSERT)))
def test_insert_read_only_medium(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    machine, device_args = _machine(qemu_caps, qemu_build, case.variant)
    target = targets.target("file", "rw", "raw")
    node = {"driver": "raw", "node-name": "m0", "read-only": True, "file": target.node("mf")}
    extra = device_args if case.variant == "scsi-cd" else []
    vm = qemu.start(*extra, "-device", f"{case.variant},id={DEV}", machine=machine,
                    wrapper=target.wrapper)
    vm.execute("blockdev-add", node)
    err = None
    for command, args in (("blockdev-open-tray", {"id": DEV}),
                          ("blockdev-insert-medium", {"id": DEV, "node-name": "m0"}),
                          ("blockdev-close-tray", {"id": DEV})):
        err = err or vm.execute_error(command, args)
    qb_evidence.note(case=case.describe(), node=node)
    got = _medium_state(vm, DEV, target.fd_path, err)
    outcome.check(devices.expect_insert_read_only_medium(case.variant), got,
                  what=f"read-only node m0 inserted into an empty {case.variant} ({case.id})",
                  build=qemu_build.name)
