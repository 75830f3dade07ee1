"""A directory given as a QEMU build: where it keeps binaries, block modules and firmware.

QEMU looks for its modules and firmware relative to its executable's
directory (``qemu_init_exec_dir()`` in util/cutils.c reads
``/proc/self/exe``, so a symlinked binary counts from its target's
directory). The plugin looks where that search looks, and then says so
explicitly (``QEMU_MODULE_DIR``, ``-L``), because not every binary of a
tree finds them on its own:

* A meson build tree (``~/qemu/build``): binaries in the tree,
  qemu-storage-daemon in ``storage-daemon/``. Since QEMU 7.1
  ``get_relocated_path()`` (util/cutils.c, commit cf60ccc330 "cutils: Introduce
  bundle mechanism") turns an install directory into
  ``<exec dir>/qemu-bundle/<install dir>``, which meson fills with symlinks to
  the built files (scripts/symlink-install-tree.py): modules in
  ``qemu-bundle/<prefix>/lib/…/qemu`` (``module_load()``, util/module.c;
  meson builds the ``block-*.so`` themselves at the top of the tree) and
  firmware in ``qemu-bundle/<prefix>/share/qemu``
  (``qemu_add_default_firmwarepath()``, system/datadir.c). Before 7.1,
  ``module_load_one()`` searched the executable's directory and
  ``find_datadir()`` ``<exec dir>/pc-bios`` (commits 98753e9a8f, 882084a04a).
  qemu-storage-daemon has no ``qemu-bundle`` next to it: on its own it loads
  the modules of the QEMU installed under the compiled-in prefix, which fail
  ("undefined symbol") or are of another version.
* A ``dpkg -x`` root (``usr/bin``, ``usr/lib/<triplet>/qemu``,
  ``usr/share/qemu``) or an install prefix (``bin``, ``lib``, ``share``):
  its binaries search their compiled-in ``/usr`` paths, i.e. the installed
  QEMU's modules and firmware.

``QEMU_MODULE_DIR`` is the first directory ``module_load()`` searches and
``-L`` directories come before the default ones (``qemu_find_file()``), so
both win over anything installed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """How one kind of directory keeps a QEMU build."""

    kind: str
    #: where binaries are looked for, in order
    bindirs: tuple[str, ...]
    #: where the layout keeps a binary, if not in ``bindirs[0]`` (for error messages)
    home: dict[str, str] = field(default_factory=dict)
    #: globs of block modules, first match wins; its directory is QEMU_MODULE_DIR
    modules: tuple[str, ...] = ()
    #: globs of the firmware/data directory, first match wins; passed as -L
    data: tuple[str, ...] = ()


LAYOUTS: tuple[Layout, ...] = (
    Layout("meson build tree", ("", "storage-daemon"), {"qemu-storage-daemon": "storage-daemon"},
           modules=("qemu-bundle/**/block-*.so", "block-*.so"),
           data=("qemu-bundle/**/share/qemu", "pc-bios")),
    Layout("dpkg -x root", ("usr/bin",),
           modules=("usr/lib/*/qemu/block-*.so", "usr/lib/qemu/block-*.so"),
           data=("usr/share/qemu",)),
    Layout("install prefix", ("bin",),
           modules=("lib/*/qemu/block-*.so", "lib*/qemu/block-*.so"),
           data=("share/qemu",)),
)


@dataclass(frozen=True)
class BuildTree:
    """A build directory once its layout is known."""

    root: Path
    layout: Layout
    module_dir: Path | None
    data_dir: Path | None

    def find(self, filename: str) -> Path | None:
        """The executable *filename* where this layout keeps binaries, or None."""
        for sub in self.layout.bindirs:
            p = self.root / sub / filename
            if _is_program(p):
                return p
        return None

    def expected(self, filename: str) -> Path:
        """Where this layout would keep *filename* (for "missing" messages)."""
        return self.root / self.layout.home.get(filename, self.layout.bindirs[0]) / filename

    @property
    def env(self) -> dict[str, str]:
        """Environment that makes every binary load this tree's modules."""
        return {"QEMU_MODULE_DIR": str(self.module_dir)} if self.module_dir else {}

    @property
    def system_args(self) -> tuple[str, ...]:
        """qemu-system arguments that make it load this tree's firmware first."""
        return ("-L", str(self.data_dir)) if self.data_dir else ()


def searched(root: Path, filename: str) -> list[Path]:
    """Every path :func:`open_tree` tries for *filename*, in order."""
    return [root / sub / filename for layout in LAYOUTS for sub in layout.bindirs]


def find_program(root: Path, filename: str) -> Path | None:
    """*filename* where any layout keeps binaries below *root* (no module or firmware search)."""
    return next((p for p in searched(root, filename) if _is_program(p)), None)


def open_tree(root: Path, system: str) -> BuildTree | None:
    """The build at *root* in the first layout that holds the *system* binary, or None."""
    for layout in LAYOUTS:
        if any(_is_program(root / sub / system) for sub in layout.bindirs):
            return BuildTree(root, layout, _first_match(root, layout.modules, parent=True),
                             _first_match(root, layout.data, parent=False))
    return None


def _first_match(root: Path, globs: tuple[str, ...], *, parent: bool) -> Path | None:
    for pattern in globs:
        for p in sorted(root.glob(pattern)):
            d = p.parent if parent else p
            if d.is_dir():
                return d
    return None


def _is_program(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)
