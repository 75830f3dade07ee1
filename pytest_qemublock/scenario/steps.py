"""Plain data of the step-wise scenarios: the users and steps of the writer bench
(:mod:`pytest_qemublock.scenario.writers`) and the layout of a backing chain
(:mod:`pytest_qemublock.scenario.chains`). The expectations import these, not
the drivers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..storage.images import Image
from ..storage.local import Storage

#: node names on the bench
FILE_NODE, FMT_NODE = "f0", "fmt0"

#: second processes that open the bench's image (WriterBench.others): qemu-io read-write and
#: read-only (-r), qemu-img info, the read-only ones also with force-share (-U)
QEMU_IO_RW, QEMU_IMG_INFO = "qemu-io rw", "qemu-img info"
QEMU_IO_RO, QEMU_IO_RO_U, QEMU_IMG_INFO_U = "qemu-io ro", "qemu-io ro -U", "qemu-img info -U"
#: every probe, in the order they run
PROBES = (QEMU_IO_RW, QEMU_IO_RO, QEMU_IO_RO_U, QEMU_IMG_INFO, QEMU_IMG_INFO_U)

#: kinds of users and what they need from fmt0
EXPORT, EXPORT_RO, NBD_ADD, SCSI_HD, SCSI_CD, VIRTIO_BLK = (
    "export", "export-ro", "nbd-server-add", "scsi-hd", "scsi-cd", "virtio-blk")
KINDS = (EXPORT, EXPORT_RO, NBD_ADD, SCSI_HD, SCSI_CD, VIRTIO_BLK)


@dataclass(frozen=True)
class User:
    """Something that attaches to fmt0: an NBD export or a guest device."""

    kind: str
    id: str
    share_rw: bool = False  # devices only: share-rw=on

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown user kind {self.kind!r} ({', '.join(KINDS)})")

    @property
    def is_device(self) -> bool:
        return self.kind in (SCSI_HD, SCSI_CD, VIRTIO_BLK)

    def __str__(self) -> str:
        text = {EXPORT: "block-export-add writable=true", EXPORT_RO: "block-export-add writable=false",
                NBD_ADD: "nbd-server-add writable=true", SCSI_HD: "device_add scsi-hd",
                SCSI_CD: "device_add scsi-cd", VIRTIO_BLK: "device_add virtio-blk-pci"}[self.kind]
        return f"{text} {self.id}" + (" share-rw=on" if self.share_rw else "")


def export(id: str) -> User:
    return User(EXPORT, id)


def export_ro(id: str) -> User:
    return User(EXPORT_RO, id)


def nbd_add(id: str) -> User:
    return User(NBD_ADD, id)


def scsi_hd(id: str, share_rw: bool = False) -> User:
    return User(SCSI_HD, id, share_rw)


def scsi_cd(id: str) -> User:
    return User(SCSI_CD, id)


def virtio_blk(id: str, share_rw: bool = False) -> User:
    return User(VIRTIO_BLK, id, share_rw)


# -- steps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attach:
    user: User

    def __str__(self) -> str:
        return f"attach: {self.user}"


@dataclass(frozen=True)
class Detach:
    id: str

    def __str__(self) -> str:
        return f"detach {self.id}"


@dataclass(frozen=True)
class Reopen:
    """``blockdev-reopen`` f0 with exactly these two options (others reset to defaults)."""

    ro: bool
    aro: bool

    def __str__(self) -> str:
        return (f"blockdev-reopen f0 {{read-only: {str(self.ro).lower()}, "
                f"auto-read-only: {str(self.aro).lower()}}}")


@dataclass(frozen=True)
class ReadExport:
    """Read the image's pattern back through NBD export *id* (the build's ``qemu-io -r``)."""

    id: str

    def __str__(self) -> str:
        return f"read the image pattern through export {self.id}"


@dataclass(frozen=True)
class Flip:
    """Make the storage accept (``writable``) or refuse writes from now on."""

    writable: bool

    def __str__(self) -> str:
        return "storage accepts writes from now on" if self.writable else "storage refuses writes again"


Step = Attach | Detach | Reopen | ReadExport | Flip


LAYERS = ("base", "mid", "top")
NODES = tuple(f"{layer}-{kind}" for layer in LAYERS for kind in ("fmt", "file"))


@dataclass
class Chain:
    """The three layers (host paths in :attr:`images`) on one storage."""

    storage: Storage
    images: dict[str, Image]  # layer -> image, created through the writable host path

    @property
    def readonly(self) -> bool:
        return self.storage.kind != "rw"

    def path(self, layer: str) -> Path:
        """The path QEMU (inside the storage's wrapper) opens for *layer*."""
        return self.storage.qemu_path(self.images[layer].path)

    def qemu_paths(self) -> dict[str, Path]:
        return {layer: self.path(layer) for layer in LAYERS}

    def describe(self) -> str:
        return f"chain base<-mid<-top on file-{self.storage.kind} ({self.storage.directory})"
