"""What a QEMU build is made of: the binaries of each role, and checking one.

:mod:`.build` resolves whole builds from these; a binary is checked by running
it with ``--version`` (in the environment it will run in).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QemuBlockError
from ..host.process import ProcessError, run


class BuildError(QemuBlockError):
    """The QEMU build under test is unusable (missing or non-QEMU binary, too old...).

    Raised during configuration; the plugin turns it into a ``pytest.UsageError``
    so the user sees one line, not a traceback.
    """


@dataclass(frozen=True)
class BinarySpec:
    role: str
    filename: str
    option: str
    env: str
    ini: str
    required: bool
    debian_package: str


BINARIES: tuple[BinarySpec, ...] = (
    # the x86_64 names; a build of another arch has its own (arch.py)
    BinarySpec("system", "qemu-system-x86_64", "--qemu-system", "QEMU_PROG", "qemu_system", True,
               "qemu-system-x86"),
    BinarySpec("img", "qemu-img", "--qemu-img", "QEMU_IMG_PROG", "qemu_img", True, "qemu-utils"),
    BinarySpec("io", "qemu-io", "--qemu-io", "QEMU_IO_PROG", "qemu_io", False, "qemu-utils"),
    BinarySpec("nbd", "qemu-nbd", "--qemu-nbd", "QEMU_NBD_PROG", "qemu_nbd", False, "qemu-utils"),
    BinarySpec("qsd", "qemu-storage-daemon", "--qemu-storage-daemon", "QSD_PROG",
               "qemu_storage_daemon", False, "qemu-system-common"),
)
SPEC_BY_ROLE = {b.role: b for b in BINARIES}

#: auto-read-only appeared in QEMU 3.1; nothing this plugin checks exists before.
MIN_VERSION = (3, 1, 0)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Binary:
    role: str
    path: Path
    source: str  # where the path came from, for the report header
    version: tuple[int, int, int]
    version_line: str
    #: e.g. QEMU_MODULE_DIR of the build tree it came from
    env: dict[str, str] = field(default_factory=dict)


def check_binary(filename: str, role: str, path: Path, source: str,
                  env: dict[str, str]) -> Binary:
    where = f"{filename} from {source}"
    if not path.exists():
        raise BuildError(f"{where}: {path} does not exist")
    if path.is_dir():
        raise BuildError(f"{where}: {path} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise BuildError(f"{where}: {path} is not executable")
    try:
        res = run([path, "--version"], timeout=20, env=env)
    except ProcessError as e:
        raise BuildError(f"{where}: {path} is not a usable QEMU binary: {e}") from None
    text = (res.stdout + res.stderr).strip()
    first = text.splitlines()[0] if text else ""
    m = _VERSION_RE.search(first)
    if res.returncode != 0 or "qemu" not in text.lower() or m is None:
        shown = first[:120] or "(nothing)"
        raise BuildError(f"{where}: {path} is not a QEMU binary (`{path.name} --version` "
                         f"printed {shown!r}, exit {res.returncode})")
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return Binary(role, path, source, version, first, env)
