"""The backends layer: how a suite gets a protocol node (file, NBD, HTTP, SSH, iSCSI)
on writable or read-only storage, one module per backend with its server."""
