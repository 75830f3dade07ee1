"""Protocol servers started by fixtures: NBD (qemu-nbd, qemu-storage-daemon,
nbdkit, a QEMU export), and the servers for other protocols.

Every server listens on a unix socket in the session's private socket dir
or on 127.0.0.1 only, is ready by protocol (never by sleep), belongs to the
process registry, and is stopped by its fixture.
"""
from .base import Listener, Server, ServerContext

__all__ = ["Listener", "Server", "ServerContext"]
