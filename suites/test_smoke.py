"""Smoke: the build and the harness work, and capability guards pick the right rule."""
import json

import pytest

from pytest_qemublock.host import procfs

pytestmark = pytest.mark.smoke


def test_file_aro_on_writable_opens_rw_with_readonly_fd(qemu, images, qemu_build):
    img = images.from_recipe("raw")
    opts = {"driver": "file", "node-name": "f0", "filename": str(img.path),
            "read-only": False, "auto-read-only": True}
    vm = qemu.start("-blockdev", json.dumps(opts))
    ro = vm.node_ro("f0")
    modes = procfs.fd_modes(vm.pid, img.path)
    assert ro is False, f"f0 {opts} [build {qemu_build.name}]: QEMU reports ro={ro}, expected ro=False"
    assert modes == ["O_RDONLY"], (
        f"f0 {opts} [build {qemu_build.name}]: fd modes {modes}, expected one O_RDONLY fd "
        f"(file-posix dynamic auto-read-only opens read-only until a writer attaches)")


def test_block_node_info_matches_the_probed_schema(qemu, images, qemu_build, qemu_caps):
    """Fields QEMU reports are those its schema announces (10.0 adds ``active``).

    The probe reads BlockDeviceInfo's members from query-qmp-schema; a build
    that announces ``active`` must report it (true for a freshly opened node),
    one that does not must not.
    """
    img = images.from_recipe("raw")
    vm = qemu.start("-blockdev", json.dumps({"driver": "file", "node-name": "f0",
                                             "filename": str(img.path), "read-only": True}))
    node = vm.nodes()["f0"]
    announced = "active" in qemu_caps.members.get("query-named-block-nodes", [])
    if announced:
        assert node.get("active") is True, (
            f"build {qemu_build.name} announces BlockDeviceInfo.active, but node f0 reports "
            f"active={node.get('active')!r}, expected True")
    else:
        assert "active" not in node, (
            f"build {qemu_build.name}'s schema has no BlockDeviceInfo.active, yet f0 reports it")
    assert "auto-read-only" not in node, (
        f"build {qemu_build.name}: query-named-block-nodes now shows auto-read-only; "
        "the degrade suites could read it instead of fd modes")
