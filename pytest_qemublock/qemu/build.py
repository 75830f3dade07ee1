"""Finding and validating the QEMU build(s) under test.

A build is a set of binaries (qemu-system-ARCH, qemu-img, qemu-io,
qemu-nbd, qemu-storage-daemon) plus the environment they need (e.g.
``QEMU_MODULE_DIR`` for a build unpacked with ``dpkg -x``). Its target arch
(:mod:`.arch`) is the ``qemu-system-*`` it has, or the one chosen: ``DIR:ARCH``
for ``--qemu-build``, ``--qb-arch`` for the default build.

Precedence for each binary of the default build, highest first: the CLI
option, the iotests environment variable (``QEMU_PROG`` ...), the ini option,
``--qemu-build-dir``, then ``PATH``. ``--qemu-build`` (repeatable) instead
names whole builds by directory; each becomes a parametrization axis.
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
from . import arch as arch_mod
from .arch import REFERENCE, Arch, ArchError


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

# Where binaries sit inside a directory given as a build: a meson build tree
# keeps qsd in storage-daemon/; a `dpkg -x` root keeps everything in usr/bin.
_BUILD_SUBDIRS = ("", "storage-daemon", "usr/bin", "bin")
_MODULE_SUBDIRS = ("usr/lib/x86_64-linux-gnu/qemu", "usr/lib/qemu", "lib/qemu")

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Binary:
    role: str
    path: Path
    source: str  # where the path came from, for the report header
    version: tuple[int, int, int]
    version_line: str


@dataclass(frozen=True)
class QemuBuild:
    """One QEMU build under test."""

    name: str
    binaries: dict[str, Binary]
    env: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # role -> why
    #: extra qemu-system arguments, e.g. ``-L`` for a relocated build's firmware
    system_args: tuple[str, ...] = ()
    #: the target of its qemu-system binary (machine and device names of the device cases)
    arch: Arch = arch_mod.ARCHES[REFERENCE]

    @property
    def version(self) -> tuple[int, int, int]:
        return self.binaries["system"].version

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def has(self, role: str) -> bool:
        return role in self.binaries

    def path(self, role: str) -> Path:
        """Path of the binary for *role*; raises :class:`BuildError` if the build lacks it."""
        try:
            return self.binaries[role].path
        except KeyError:
            raise BuildError(f"build {self.name!r} has no {_filename(role, self.arch)}: "
                             f"{self.missing.get(role, 'not found')}") from None

    def describe(self) -> list[str]:
        lines = [f"qemu build {self.name!r}: QEMU {self.version_str}"
                 + (f" ({' '.join(f'{k}={v}' for k, v in self.env.items())})" if self.env else ""),
                 f"  {'arch':<21} {self.arch.name} (device cases on -M {self.arch.device_machine})"]
        for spec in BINARIES:
            b = self.binaries.get(spec.role)
            filename = _filename(spec.role, self.arch)
            if b is not None:
                lines.append(f"  {filename:<21} {b.path}  [{b.source}]")
            else:
                lines.append(f"  {filename:<21} missing: {self.missing.get(spec.role)}")
        return lines


GetOption = Callable[[str], "str | None"]


def resolve_default_build(
    get_option: GetOption,
    get_ini: GetOption,
    build_dir: str | None,
    name: str = "default",
    environ: dict[str, str] | None = None,
) -> QemuBuild:
    """Resolve the default build by the documented precedence chain.

    Its arch: ``--qb-arch`` (ini ``qb_arch``), else the name of a qemu-system
    given explicitly, else the one ``--qemu-build-dir`` holds, else x86_64.
    """
    environ = dict(os.environ if environ is None else environ)
    root = _check_build_dir(build_dir) if build_dir else None
    chosen = _chosen_arch(get_option("--qb-arch") or get_ini("qb_arch"))
    candidates: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}
    arch = chosen or (_dir_arch(root, f"--qemu-build-dir {build_dir}") if root
                      else arch_mod.ARCHES[REFERENCE])
    for spec in BINARIES:
        found = _first(
            (get_option(spec.option), f"option {spec.option}", True),
            (environ.get(spec.env), f"${spec.env}", True),
            (get_ini(spec.ini), f"ini {spec.ini}", True),
        )
        if spec.role == "system" and found is not None:
            arch = _explicit_arch(found, chosen) or arch
        filename = _filename(spec.role, arch)
        if found is None and root is not None:
            p = _find_in_dir(root, filename)
            if p is not None:
                found = (p, f"--qemu-build-dir {root}")
        if found is None:
            w = shutil.which(filename)
            if w:
                found = (Path(w), "PATH")
        if found is None:
            package = arch.debian_package if spec.role == "system" else spec.debian_package
            missing[spec.role] = (f"not found on PATH (install Debian package {package}, "
                                  f"or pass {spec.option} / set {spec.env})")
            continue
        candidates[spec.role] = found
    env = _module_env(root) if root is not None else {}
    name = arch.name if name == "default" and arch.name != REFERENCE else arch_mod.label(name, arch)
    return _validate(name, arch, candidates, missing, env,
                     _data_args(root) if root is not None else ())


def split_build_spec(spec: str) -> tuple[str, str, str | None]:
    """``[NAME=]DIR[:ARCH]`` -> (name, directory, arch or None), without touching the file system.

    Raises :class:`BuildError` for an empty or unusable name (``/`` has none),
    an empty directory (``NAME=``) or an unknown arch.
    """
    name, sep, directory = spec.partition("=")
    if not sep:
        directory, name = spec, ""
    arch: str | None = None
    if ":" in directory:
        directory, _, arch = directory.rpartition(":")
        try:
            arch_mod.get(arch)
        except ArchError as e:
            raise BuildError(f"--qemu-build {spec!r}: {e}") from None
    if not sep:
        name = Path(directory.rstrip("/")).name
    if not directory:
        raise BuildError(f"--qemu-build {spec!r}: no directory after {name + '='!r}")
    if not name:
        raise BuildError(f"--qemu-build {spec!r}: {directory!r} has no name to call the build by; "
                         f"use NAME={directory}")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
        raise BuildError(f"--qemu-build {spec!r}: the build name {name!r} "
                         "may only use letters, digits and ._+-")
    return name, directory, arch


def resolve_named_build(spec: str) -> QemuBuild:
    """Resolve ``[NAME=]DIR[:ARCH]`` (a build tree or a ``dpkg -x`` root)."""
    name, directory, arch_name = split_build_spec(spec)
    root = _check_build_dir(directory)
    arch = arch_mod.get(arch_name) if arch_name else _dir_arch(root, f"--qemu-build {spec}")
    name = arch_mod.label(name, arch)
    candidates: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}
    for b in BINARIES:
        p = _find_in_dir(root, _filename(b.role, arch))
        if p is None:
            missing[b.role] = f"not in {root}"
        else:
            candidates[b.role] = (p, f"--qemu-build {name}")
    return _validate(name, arch, candidates, missing, _module_env(root), _data_args(root))


def build_labels(build_specs: Sequence[str]) -> list[tuple[str, Arch]]:
    """The name (as test ids show it) and arch of each ``--qemu-build`` spec.

    Collection needs them on every xdist worker, identically: they depend on the
    spec and on which qemu-system-* files its directory holds, nothing run.
    """
    out = []
    for spec in build_specs:
        name, directory, arch_name = split_build_spec(spec)
        try:
            arch = arch_mod.get(arch_name) if arch_name else _dir_arch(Path(directory), spec)
        except BuildError:
            arch = arch_mod.ARCHES[REFERENCE]  # resolution reports the unusable directory
        out.append((arch_mod.label(name, arch), arch))
    return out


def build_names(build_specs: Sequence[str]) -> list[str]:
    """The names of ``--qemu-build`` specs, as test ids show them (:func:`build_labels`)."""
    return [name for name, _ in build_labels(build_specs)]


def _filename(role: str, arch: Arch) -> str:
    return arch.system_binary if role == "system" else SPEC_BY_ROLE[role].filename


def _chosen_arch(value: str | None) -> Arch | None:
    try:
        return arch_mod.get(value) if value else None
    except ArchError as e:
        raise BuildError(f"--qb-arch: {e}") from None


def _explicit_arch(found: tuple[Path, str], chosen: Arch | None) -> Arch | None:
    """The arch a qemu-system given by path says by its name; a clash with --qb-arch is an error.

    A name that says nothing (a wrapper script) keeps the chosen arch, or x86_64;
    the probe checks it against QMP query-target.
    """
    path, source = found
    named = arch_mod.from_filename(path.name)
    if named is not None and chosen is not None and named != chosen:
        raise BuildError(f"{path.name} from {source} is an {named.name} QEMU, "
                         f"but --qb-arch says {chosen.name}")
    return named


def _dir_arch(root: Path, where: str) -> Arch:
    """The arch of the qemu-system-* *root* holds: x86_64 if it has it, else its only one."""
    present = [a for a in arch_mod.ARCHES.values() if _find_in_dir(root, a.system_binary)]
    if not present:
        raise BuildError(f"{where}: no qemu-system-ARCH for an arch in {', '.join(sorted(arch_mod.ARCHES))}")
    if any(a.name == REFERENCE for a in present) or len(present) == 1:
        return next((a for a in present if a.name == REFERENCE), present[0])
    names = ", ".join(a.system_binary for a in present)
    raise BuildError(f"{where}: holds {names}; choose one with DIR:ARCH (--qemu-build) or --qb-arch")


def _data_args(root: Path) -> tuple[str, ...]:
    # A relocated build would otherwise load the system QEMU's firmware/ROMs.
    d = root / "usr/share/qemu"
    return ("-L", str(d)) if d.is_dir() else ()


def _first(*choices: tuple[str | None, str, bool]) -> tuple[Path, str] | None:
    for value, source, _ in choices:
        if value:
            return Path(os.path.expanduser(value)), source
    return None


def _check_build_dir(directory: str) -> Path:
    root = Path(os.path.expanduser(directory))
    if not root.exists():
        raise BuildError(f"QEMU build directory {directory!r} does not exist")
    if not root.is_dir():
        raise BuildError(f"QEMU build directory {directory!r} is not a directory")
    systems = [a.system_binary for a in arch_mod.ARCHES.values()]
    if not any(_find_in_dir(root, f) for f in systems):
        looked = ", ".join(str(root / d / "qemu-system-*") for d in _BUILD_SUBDIRS)
        raise BuildError(f"QEMU build directory {directory!r} is unusable: no {' or '.join(systems)} "
                         f"(looked at {looked}); build QEMU there first or pass the right directory")
    return root.resolve()


def _find_in_dir(root: Path, filename: str) -> Path | None:
    for sub in _BUILD_SUBDIRS:
        p = root / sub / filename
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _module_env(root: Path) -> dict[str, str]:
    # A relocated (dpkg -x) build looks for block modules in its compiled-in
    # /usr/lib path, i.e. the *system* QEMU's modules; point it at its own.
    for sub in _MODULE_SUBDIRS:
        d = root / sub
        if d.is_dir() and any(d.glob("block-*.so")):
            return {"QEMU_MODULE_DIR": str(d)}
    return {}


def _validate(name: str, arch: Arch, candidates: dict[str, tuple[Path, str]], missing: dict[str, str],
              env: dict[str, str], system_args: tuple[str, ...] = ()) -> QemuBuild:
    binaries: dict[str, Binary] = {}
    for role, (path, source) in candidates.items():
        binaries[role] = _check_binary(_filename(role, arch), role, path, source, env)
    for spec in BINARIES:
        if spec.required and spec.role not in binaries:
            raise BuildError(f"{_filename(spec.role, arch)} {missing[spec.role]}")
    build = QemuBuild(name, binaries, env, missing, system_args, arch)
    if build.version < MIN_VERSION:
        raise BuildError(
            f"{binaries['system'].path} is QEMU {build.version_str}: too old, auto-read-only "
            f"needs QEMU {'.'.join(map(str, MIN_VERSION[:2]))} or newer")
    return build


def _check_binary(filename: str, role: str, path: Path, source: str, env: dict[str, str]) -> Binary:
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
    return Binary(role, path, source, version, first)


def resolve_builds(build_specs: Sequence[str], default: Callable[[], QemuBuild]) -> list[QemuBuild]:
    """All builds of this session: each ``--qemu-build``, or else the default build."""
    if not build_specs:
        return [default()]
    builds = [resolve_named_build(s) for s in build_specs]
    names = [b.name for b in builds]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BuildError(f"--qemu-build names must be unique; repeated: {', '.join(dupes)} "
                         f"(use NAME=DIR to name them)")
    return builds
