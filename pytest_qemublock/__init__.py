"""pytest-qemublock: gate QEMU builds on the block layer's read-only handling.

Public API for suites (the fixtures are documented in ``docs/writing-suites.md``).
The package is layered, each layer importing only the ones below it:
``plugin``/``fixtures`` > ``expectations`` > ``scenario`` > ``backends`` >
``storage`` > ``qemu`` > ``evidence`` > ``host`` > ``errors``
(``docs/architecture.md``).
"""
from .backends.server import ServerError
from .errors import QemuBlockError
from .host.process import ProcessError
from .qemu.build import BuildError, QemuBuild
from .qemu.instance import LaunchError, QemuInstance, Wrapper
from .qemu.qmp import QmpCommandError, QmpError, QmpTimeout
from .storage.images import Image, ImageFactory, Pattern
from .storage.local import StorageUnavailable

__all__ = [
    "QemuBlockError", "BuildError", "ProcessError", "LaunchError", "QmpTimeout", "QmpCommandError",
    "ServerError", "StorageUnavailable",
    "QemuBuild", "QemuInstance", "Wrapper", "QmpError", "Image", "ImageFactory", "Pattern",
]
