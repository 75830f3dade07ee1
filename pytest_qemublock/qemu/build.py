"""Finding and validating the QEMU build(s) under test.

A build is a set of binaries (qemu-system-x86_64, qemu-img, qemu-io,
qemu-nbd, qemu-storage-daemon) plus the environment and arguments that make
them use their own modules and firmware (``QEMU_MODULE_DIR``, ``-L``; see
:mod:`.buildtree` for where a build directory keeps them).

Precedence for each binary of the default build, highest first: the CLI
option, the iotests environment variable (``QEMU_PROG`` ...), the ini option,
``--qemu-build-dir``, then ``PATH``. ``--qemu-build`` (repeatable) instead
names whole builds by directory; each becomes a parametrization axis.

Mixing: once a build directory is given, ``PATH`` is no fallback. A binary
neither set explicitly nor in the directory is an error naming it, unless
``--qb-allow-mixed-build`` asks for the fallback (the header then says so).
A directory's ``QEMU_MODULE_DIR`` goes to the binaries that come from it, its
``-L`` to its own qemu-system: a binary set explicitly or mixed in is of
another build and keeps that build's modules and firmware.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QemuBlockError
from ..host.process import ProcessError, run
from .buildtree import BuildTree, open_tree, searched


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

#: the option that lets a build directory's missing binaries come from PATH
ALLOW_MIXED = "--qb-allow-mixed-build"
_MIXED_SOURCE = f"PATH, mixed in by {ALLOW_MIXED}"

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


@dataclass(frozen=True)
class QemuBuild:
    """One QEMU build under test."""

    name: str
    binaries: dict[str, Binary]
    env: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # role -> why
    #: extra qemu-system arguments, e.g. ``-L`` for a relocated build's firmware
    system_args: tuple[str, ...] = ()

    @property
    def version(self) -> tuple[int, int, int]:
        return self.binaries["system"].version

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def env_for(self, role: str) -> dict[str, str]:
        """Environment to run *role*'s binary in: its build tree's, none for one set
        explicitly or mixed in from PATH (it loads the modules of its own build)."""
        b = self.binaries.get(role)
        return dict(self.env if b is None else b.env)

    def has(self, role: str) -> bool:
        return role in self.binaries

    def path(self, role: str) -> Path:
        """Path of the binary for *role*; raises :class:`BuildError` if the build lacks it."""
        try:
            return self.binaries[role].path
        except KeyError:
            raise BuildError(f"build {self.name!r} has no {SPEC_BY_ROLE[role].filename}: "
                             f"{self.missing.get(role, 'not found')}") from None

    def describe(self) -> list[str]:
        lines = [f"qemu build {self.name!r}: QEMU {self.version_str}"
                 + (f" ({_env_text(self.env)})" if self.env else "")]
        for spec in BINARIES:
            b = self.binaries.get(spec.role)
            if b is not None:
                own = f" ({_env_text(b.env) or 'its own modules'})" if b.env != self.env else ""
                lines.append(f"  {spec.filename:<21} {b.path}  [{b.source}]{own}")
            else:
                lines.append(f"  {spec.filename:<21} missing: {self.missing.get(spec.role)}")
        if self.system_args:
            lines.append(f"  {'firmware, data':<21} {' '.join(self.system_args)}")
        return lines


def _env_text(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


GetOption = Callable[[str], "str | None"]


def resolve_default_build(
    get_option: GetOption,
    get_ini: GetOption,
    build_dir: str | None,
    name: str = "default",
    environ: dict[str, str] | None = None,
    allow_mixed: bool = False,
) -> QemuBuild:
    """Resolve the default build by the documented precedence chain and mixing rule."""
    environ = dict(os.environ if environ is None else environ)
    tree = _check_build_dir(build_dir) if build_dir else None
    candidates: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}
    absent = []
    from_tree = set()
    for spec in BINARIES:
        found = _first(
            (get_option(spec.option), f"option {spec.option}", True),
            (environ.get(spec.env), f"${spec.env}", True),
            (get_ini(spec.ini), f"ini {spec.ini}", True),
        )
        if found is None and tree is not None:
            p = tree.find(spec.filename)
            if p is not None:
                found = (p, f"--qemu-build-dir {tree.root}")
                from_tree.add(spec.role)
            elif not allow_mixed:
                absent.append(spec)
                continue
        if found is None:
            found = _on_path(spec, tree, "PATH" if tree is None else _MIXED_SOURCE, missing)
        if found is not None:
            candidates[spec.role] = found
    if tree is not None and absent:
        raise BuildError(_absent(f"QEMU build directory {tree.root}", tree, absent,
                                 "/".join(s.option for s in absent)))
    return _validate(name, candidates, missing, tree, from_tree)


def split_build_spec(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` -> (name, directory), without touching the file system.

    Raises :class:`BuildError` for an empty or unusable name (``/`` has none)
    or an empty directory (``NAME=``).
    """
    name, sep, directory = spec.partition("=")
    if not sep:
        directory, name = spec, Path(spec.rstrip("/")).name
    if not directory:
        raise BuildError(f"--qemu-build {spec!r}: no directory after {name + '='!r}")
    if not name:
        raise BuildError(f"--qemu-build {spec!r}: {directory!r} has no name to call the build by; "
                         f"use NAME={directory}")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise BuildError(f"--qemu-build {spec!r}: the build name {name!r} "
                         "may only use letters, digits and ._+-")
    return name, directory


def resolve_named_build(spec: str, allow_mixed: bool = False) -> QemuBuild:
    """Resolve ``NAME=DIR`` or ``DIR`` (a build tree or a ``dpkg -x`` root): every
    binary from DIR, or with *allow_mixed* from PATH if DIR lacks it."""
    name, directory = split_build_spec(spec)
    tree = _check_build_dir(directory)
    candidates: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}
    absent = []
    for b in BINARIES:
        p = tree.find(b.filename)
        if p is not None:
            candidates[b.role] = (p, f"--qemu-build {name}")
        elif not allow_mixed:
            absent.append(b)
        else:
            found = _on_path(b, tree, _MIXED_SOURCE, missing)
            if found is not None:
                candidates[b.role] = found
    if absent:
        raise BuildError(_absent(f"--qemu-build {name}: {tree.root}", tree, absent, None))
    return _validate(name, candidates, missing, tree,
                     {r for r, (_, src) in candidates.items() if src != _MIXED_SOURCE})


def build_names(build_specs: Sequence[str]) -> list[str]:
    """The names of ``--qemu-build`` specs, without touching the file system.

    Collection (test ids) needs them on every xdist worker, identically.
    """
    return [split_build_spec(spec)[0] for spec in build_specs]


def _on_path(spec: BinarySpec, tree: BuildTree | None, source: str,
             missing: dict[str, str]) -> tuple[Path, str] | None:
    w = shutil.which(spec.filename)
    if w:
        return Path(w), source
    where = "on PATH" if tree is None else f"in {tree.root} nor on PATH"
    missing[spec.role] = (f"not found {where} (install Debian package {spec.debian_package}, "
                          f"or pass {spec.option} / set {spec.env})")
    return None


def _absent(what: str, tree: BuildTree, absent: list[BinarySpec], options: str | None) -> str:
    """One line: which binaries the build directory lacks, where, and the ways out."""
    names = ", ".join(s.filename for s in absent)
    paths = ", ".join(str(tree.expected(s.filename)) for s in absent)
    it = "it" if len(absent) == 1 else "them"
    explicit = f", pass {options} PATH," if options else ""
    return (f"{what} ({tree.layout.kind}) has no {names} (expected {paths}): build {it} there"
            f"{explicit} or pass {ALLOW_MIXED} to take {it} from PATH")


def _first(*choices: tuple[str | None, str, bool]) -> tuple[Path, str] | None:
    for value, source, _ in choices:
        if value:
            return Path(os.path.expanduser(value)), source
    return None


def _check_build_dir(directory: str) -> BuildTree:
    root = Path(os.path.expanduser(directory))
    if not root.exists():
        raise BuildError(f"QEMU build directory {directory!r} does not exist")
    if not root.is_dir():
        raise BuildError(f"QEMU build directory {directory!r} is not a directory")
    system = SPEC_BY_ROLE["system"].filename
    tree = open_tree(root.resolve(), system)
    if tree is None:
        looked = ", ".join(map(str, searched(root, system)))
        raise BuildError(f"QEMU build directory {directory!r} is unusable: no {system} "
                         f"(looked at {looked}); build QEMU there first or pass the right directory")
    return tree


def _validate(name: str, candidates: dict[str, tuple[Path, str]], missing: dict[str, str],
              tree: BuildTree | None, from_tree: set[str]) -> QemuBuild:
    """Check every binary; those in *from_tree* run with the tree's environment."""
    binaries: dict[str, Binary] = {}
    for role, (path, source) in candidates.items():
        env = tree.env if tree is not None and role in from_tree else {}
        binaries[role] = _check_binary(SPEC_BY_ROLE[role], path, source, env)
    for spec in BINARIES:
        if spec.required and spec.role not in binaries:
            raise BuildError(f"{spec.filename} {missing[spec.role]}")
    # Firmware and the build's environment go with its qemu-system: forcing a tree's
    # modules on a qemu-system of another build aborts it (QEMU 7.2 on 10.0's block-iscsi.so:
    # module_load_dso() asserts).
    own = tree if tree is not None and "system" in from_tree else None
    build = QemuBuild(name, binaries, own.env if own else {}, missing, own.system_args if own else ())
    if build.version < MIN_VERSION:
        raise BuildError(
            f"{binaries['system'].path} is QEMU {build.version_str}: too old, auto-read-only "
            f"needs QEMU {'.'.join(map(str, MIN_VERSION[:2]))} or newer")
    return build


def _check_binary(spec: BinarySpec, path: Path, source: str, env: dict[str, str]) -> Binary:
    where = f"{spec.filename} from {source}"
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
    return Binary(spec.role, path, source, version, first, env)


def resolve_builds(build_specs: Sequence[str], default: Callable[[], QemuBuild],
                   allow_mixed: bool = False) -> list[QemuBuild]:
    """All builds of this session: each ``--qemu-build``, or else the default build."""
    if not build_specs:
        return [default()]
    builds = [resolve_named_build(s, allow_mixed) for s in build_specs]
    names = [b.name for b in builds]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BuildError(f"--qemu-build names must be unique; repeated: {', '.join(dupes)} "
                         f"(use NAME=DIR to name them)")
    return builds
