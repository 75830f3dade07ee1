"""The hostdev backend: QEMU's host_device driver on a loop device attached read-only.

``losetup -r --find --show IMAGE`` attaches the test's image (created on
writable storage) as a read-only block device: the kernel still lets QEMU
open it O_RDWR, but ``BLKROGET`` says read-only and writes fail, which
file-posix checks itself (``check_hdev_writable``). Root only.

The loop device belongs to the test: it is detached when the test ends,
passed or failed (:class:`LoopDevice` sits among the provisioner's servers).
A run that died cannot do that, so each attach first looks for loop
devices left behind (:func:`detach_stale`): a back-file with an owner
record (``IMAGE.qb-owner``: pid and start time of the pytest process that
attached it) whose process is gone, or a deleted back-file under a
qemublock work dir. Those are detached and reported.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..host.process import run
from ..host.procfs import in_host_user_namespace
from ..qemu.build import QemuBuild
from .base import Backend, ProvideContext, Target, new_image
from .server import Server, ServerError

#: the image's owner record: next to it, so a later run finds it from losetup's back-file
OWNER_SUFFIX = ".qb-owner"
#: a deleted back-file of a qemublock work dir (``<base>/qb-<worker>-<random>/t<N>/...``)
WORKDIR_FILE = re.compile(r"/qb-[^/]+/t\d+/.* \(deleted\)$")
TIMEOUT = 10.0  # seconds, times --qb-timeout-factor


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if PID is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def loop_devices(timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """``losetup --json --list``: every loop device with its back-file."""
    res = run(["losetup", "--json", "--list"], timeout=timeout)
    if res.returncode != 0:
        raise ServerError(f"losetup --json --list failed: {res.stderr.strip()}")
    if not res.stdout.strip():
        return []  # no loop device at all: losetup prints nothing
    devices: list[dict[str, Any]] = json.loads(res.stdout).get("loopdevices", [])
    return devices


def _owner_alive(back_file: str) -> bool | None:
    """Whether the run that attached *back_file* is alive; None: not ours (no owner record)."""
    try:
        owner = json.loads(Path(back_file + OWNER_SUFFIX).read_text())
    except (OSError, ValueError):
        return None
    return bool(_start_time(int(owner["pid"])) == owner["start"])


def detach_stale(timeout: float = TIMEOUT) -> list[str]:
    """Detach loop devices that dead qemublock runs left attached; describe each one."""
    done = []
    for dev in loop_devices(timeout):
        back = str(dev.get("back-file") or "")
        alive = _owner_alive(back)
        if alive is False or (alive is None and WORKDIR_FILE.search(back)):
            res = run(["losetup", "-d", dev["name"]], timeout=timeout)
            how = "detached" if res.returncode == 0 else f"could not detach ({res.stderr.strip()})"
            done.append(f"{dev['name']} on {back} (left by a dead run): {how}")
    return done


class LoopDevice(Server):
    """A loop device attached read-only for one test; :meth:`stop` detaches it."""

    kind = "loop device"

    def __init__(self, device: str, back_file: Path, timeout: float) -> None:  # noqa: PLW0231 - no process
        self.device, self.back_file, self.timeout = device, back_file, timeout
        self.readonly = True
        self.listener = None

    def stop(self) -> None:
        res = run(["losetup", "-d", self.device], timeout=self.timeout)
        left = [d for d in loop_devices(self.timeout)
                if d.get("back-file") == str(self.back_file) and not d.get("autoclear")]
        Path(str(self.back_file) + OWNER_SUFFIX).unlink(missing_ok=True)
        if left:
            # a device still open (QEMU alive) gets autoclear and goes with its last user
            raise ServerError(f"losetup -d {self.device} left {left}: {res.stderr.strip()}")

    def describe(self) -> str:
        return f"{self.kind} {self.device} (read-only) on {self.back_file}"


def attach_readonly(image: Path, timeout: float) -> LoopDevice:
    """``losetup -r --find --show IMAGE``, with the owner record written first."""
    Path(str(image) + OWNER_SUFFIX).write_text(
        json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
    res = run(["losetup", "-r", "--find", "--show", str(image)], timeout=timeout)
    if res.returncode != 0 or not res.stdout.strip().startswith("/dev/"):
        raise ServerError(f"losetup -r --find --show {image} failed: {res.stderr.strip() or res.stdout}")
    return LoopDevice(res.stdout.strip(), image, timeout)


class HostdevBackend(Backend):
    """host_device over a read-only loop device (storage ``ro``)."""

    name = "hostdev"
    driver = "host_device"
    storages = ("ro",)

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        if os.geteuid() != 0:
            return "hostdev needs root: losetup attaches loop devices only for root"
        if not in_host_user_namespace():
            return ("hostdev needs root of the host: uid 0 of a user namespace (unshare -r) "
                    "cannot open /dev/loop-control nor attach loop devices")
        if shutil.which("losetup") is None:
            return "hostdev needs losetup (Debian package mount)"
        if not Path("/dev/loop-control").exists():
            return "hostdev needs loop devices: /dev/loop-control is missing (modprobe loop)"
        return None

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        timeout = TIMEOUT * ctx.server_ctx.timeouts.factor
        stale = detach_stale(timeout)
        if stale:
            warnings.warn("hostdev: " + "; ".join(stale), stacklevel=2)
            ctx.server_ctx.evidence.note(stale_loop_devices=stale)
        img = new_image(ctx, recipe)
        loop = attach_readonly(img.path, timeout)
        ctx.servers.append(loop)  # detached with the test's servers, whatever the outcome
        dev = Path(loop.device)
        return Target(self.name, storage, self.driver, img, {"driver": "host_device", "filename": str(dev)},
                      fd_path=dev, error_text="Permission denied", server=loop, drive_file=str(dev))
