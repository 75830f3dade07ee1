"""Plain data for the unit tests: a build's capabilities and targets, no QEMU run."""
from __future__ import annotations

from pathlib import Path

from pytest_qemublock.backends.base import Target
from pytest_qemublock.qemu.capabilities import Capabilities
from pytest_qemublock.storage.images import Image

STRERROR = {"erofs": "Read-only file system", "eacces": "Permission denied"}


def caps(version: tuple[int, int] = (10, 0), dynamic: bool = True) -> Capabilities:
    """Capabilities of a build as the probe records them (only what the rules ask)."""
    return Capabilities(
        version=[*version, 0], package="", accelerators=["qtest"], machines=["none", "pc"],
        formats=["raw", "qcow2"], events=[],
        commands=["blockdev-add", "blockdev-reopen", "nbd-server-start", "getfd", "block-export-add",
                  "block-export-del", "nbd-server-add", "nbd-server-remove", "device_add", "device_del"],
        features={"BlockdevOptions.file": ["dynamic-auto-read-only"] if dynamic else []})


def file_target(storage: str = "rw") -> Target:
    path = Path(f"/srv/st-{storage}/raw.img")
    return Target("file", storage, "file", Image(path, "raw", "1M"),
                  {"driver": "file", "filename": str(path)}, fd_path=path,
                  error_text=STRERROR.get(storage))


def nbd_target(storage: str = "ro") -> Target:
    return Target("nbd-qemu-nbd-unix", storage, "nbd", Image(Path("/srv/raw.img"), "raw", "1M"),
                  {"driver": "nbd", "server": {"type": "unix", "path": "/run/s"}, "export": "e"})
