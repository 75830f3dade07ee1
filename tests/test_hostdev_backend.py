"""The hostdev backend's loop devices, checked from the outside.

A loop device attached by the backend refuses writes (BLKROGET, and a real
write fails) and is detached by stop(); a loop device whose owner run is
dead is found by its back-file's owner record and detached by the next
attach, while one whose owner is alive is left alone. Root only.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from pytest_qemublock.backends import hostdev

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                                reason="needs root and loop devices (losetup)")


def attached(path):
    return [d for d in hostdev.loop_devices() if d.get("back-file") == str(path)]


@pytest.fixture
def image(images):
    return images.from_recipe("raw")


@pytest.fixture
def loop(image):
    dev = hostdev.attach_readonly(image.path, 10.0)
    yield dev
    if attached(image.path):
        dev.stop()


def test_loop_device_refuses_writes_and_is_detached(loop, image):
    assert subprocess.run(["blockdev", "--getro", loop.device], capture_output=True,
                          text=True, check=True).stdout.strip() == "1"
    fd = os.open(loop.device, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"\x77" * 512)
            os.fsync(fd)
        assert e.value.errno in (errno.EPERM, errno.EACCES, errno.EROFS, errno.EIO), e.value
    finally:
        os.close(fd)
    assert attached(image.path), f"{loop.describe()} is not in losetup --list"
    loop.stop()
    assert attached(image.path) == [], f"{loop.describe()} still attached after stop()"
    assert not os.path.exists(str(image.path) + hostdev.OWNER_SUFFIX)
    assert image.unchanged()


def test_dead_runs_loop_device_is_detached_live_ones_kept(loop, image, images):
    other = images.create("other", "raw", "1M")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = hostdev.attach_readonly(other.path, 10.0)
    try:
        # as if another run (pid now gone) had attached it and died before its teardown
        owner = json.dumps({"pid": dead.pid, "start": "0"})
        with open(str(other.path) + hostdev.OWNER_SUFFIX, "w") as f:
            f.write(owner)
        done = hostdev.detach_stale()
        assert any(stale.device in d and "detached" in d for d in done), done
        assert attached(other.path) == [], f"{stale.device} on {other.path} left attached"
        assert attached(image.path), f"the live run's {loop.describe()} was detached: {done}"
    finally:
        if attached(other.path):
            stale.stop()
