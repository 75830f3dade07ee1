"""Exception hierarchy of pytest-qemublock.

Everything the plugin raises on purpose derives from :class:`QemuBlockError`,
so a suite can tell "QEMU did something unexpected" from a bug in a test.
Each specific error lives beside the code that raises it (``qemu.build.BuildError``,
``host.process.ProcessError``, ``qemu.instance.LaunchError``, ``qemu.qmp.QmpTimeout``
and ``QmpCommandError``, ``backends.server.ServerError``,
``storage.local.StorageUnavailable``, ``host.namespace.NamespaceError``); the package
root re-exports them.
"""
from __future__ import annotations


class QemuBlockError(Exception):
    """Base class of all errors raised by pytest-qemublock."""
