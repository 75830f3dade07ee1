"""Smoke: a file node with auto-read-only=on on writable storage."""
import json

from pytest_qemublock import hostfacts


def test_file_aro_on_writable_opens_rw_with_readonly_fd(qemu, images):
    img = images.from_recipe("raw")
    opts = {"driver": "file", "node-name": "f0", "filename": str(img.path),
            "read-only": False, "auto-read-only": True}
    vm = qemu.start("-blockdev", json.dumps(opts))
    ro = vm.node_ro("f0")
    modes = hostfacts.fd_modes(vm.pid, img.path)
    assert ro is False, f"f0 {opts}: QEMU reports ro={ro}, expected ro=False (writable storage)"
    assert modes == ["O_RDONLY"], (
        f"f0 {opts}: fd modes {modes}, expected one O_RDONLY fd (file-posix dynamic "
        f"auto-read-only opens read-only until a writer attaches)")
