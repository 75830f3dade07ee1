"""pytest-qemublock: gate QEMU builds on the block layer's read-only handling.

Public API for suites (the fixtures are documented in ``docs/writing-suites.md``).
"""
from .build import QemuBuild
from .errors import LaunchError, ProcessError, QemuBlockError, QmpCommandError, QmpTimeout
from .images import Image, ImageFactory, Pattern
from .machine import QemuInstance, Wrapper
from .qmp import QmpError

__all__ = [
    "Image", "ImageFactory", "LaunchError", "Pattern", "ProcessError", "QemuBlockError",
    "QemuBuild", "QemuInstance", "QmpCommandError", "QmpError", "QmpTimeout", "Wrapper",
]
