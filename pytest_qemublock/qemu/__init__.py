"""The QEMU layer: the build under test and its probed capabilities, QMP, running
QEMU / qemu-storage-daemon instances and the build's tools (qemu-img, qemu-io)."""
