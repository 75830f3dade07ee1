"""The host layer: processes (start, stop, reap after crashes), what the kernel says
about them (/proc), private mount namespaces and pre-bound listening sockets.
Knows nothing of QEMU."""
