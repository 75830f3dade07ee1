"""The target architectures a build can be, as data: what differs between them for this plugin.

The block layer is the same on every target; what is not is the machine a case
needs for guest devices and how a device gets onto it. Everything else runs on
``-M none``, which every target has. Adding a target is one :data:`ARCHES` entry
(and a run of the suites on it: see docs/architecture.md, "Adding a build").
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import QemuBlockError


class ArchError(QemuBlockError):
    """An arch name the plugin has no facts for."""


@dataclass(frozen=True)
class Arch:
    """One target: ``qemu-system-<name>`` and how the device cases run on it."""

    name: str
    debian_package: str
    #: the machine of the device cases (a PCI bus for virtio-scsi-pci / virtio-blk-pci)
    device_machine: str
    scsi_controller: str = "virtio-scsi-pci"
    virtio_blk: str = "virtio-blk-pci"
    #: ``-device`` values that give the machine a PCI slot device_add may plug into, and
    #: the bus to name in device_add; none where the machine's own PCI bus hotplugs
    hotplug_slot: tuple[str, ...] = ()
    hotplug_bus: str | None = None

    @property
    def system_binary(self) -> str:
        return f"qemu-system-{self.name}"

    def device_args(self) -> list[str]:
        """The ``-device`` arguments a device case's QEMU starts with (the SCSI controller
        ``scsi0`` and any hotplug slot)."""
        args = ["-device", f"{self.scsi_controller},id=scsi0"]
        for dev in self.hotplug_slot:
            args += ["-device", dev]
        return args


#: The arch whose builds keep their plain name in test ids (the plugin's first target,
#: so results files of earlier runs stay comparable).
REFERENCE = "x86_64"

ARCHES: dict[str, Arch] = {a.name: a for a in (
    # pc: PCI bus 0 hotplugs through ACPI (hw/acpi/pcihp.c), device_add needs no bus.
    Arch("x86_64", "qemu-system-x86", device_machine="pc"),
    # virt: the GPEX root bus pcie.0 has no hotplug handler, so device_add onto it fails
    # with "Bus 'pcie.0' does not support hotplugging" (softmmu/qdev-monitor.c
    # qdev_device_add_from_qdict); a pcie-root-port's slot hotplugs (hw/pci/pcie.c
    # pcie_cap_slot_plug_cb), without a guest for the plug.
    Arch("aarch64", "qemu-system-arm", device_machine="virt",
         hotplug_slot=("pcie-root-port,id=hp0",), hotplug_bus="hp0"),
)}


def get(name: str) -> Arch:
    """The facts of arch *name*; :class:`ArchError` (one line) if there are none."""
    try:
        return ARCHES[name]
    except KeyError:
        raise ArchError(f"unknown arch {name!r} (known: {', '.join(sorted(ARCHES))})") from None


def from_filename(filename: str) -> Arch | None:
    """The arch a ``qemu-system-<arch>`` file name says, or None (another name, e.g. a wrapper)."""
    prefix = "qemu-system-"
    return ARCHES.get(filename[len(prefix):]) if filename.startswith(prefix) else None


def label(name: str, arch: Arch) -> str:
    """The build's name in test ids: ``v7.2`` for x86_64, ``v7.2-aarch64`` for aarch64
    (unless the name already ends with its arch)."""
    if arch.name in (REFERENCE, name) or name.endswith(f"-{arch.name}"):
        return name
    return f"{name}-{arch.name}"
