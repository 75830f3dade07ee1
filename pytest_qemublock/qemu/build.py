"""Finding and validating the QEMU build(s) under test.

A build is a set of binaries (qemu-system-ARCH, qemu-img, qemu-io,
qemu-nbd, qemu-storage-daemon) plus the environment and arguments that make
them use their own modules and firmware (``QEMU_MODULE_DIR``, ``-L``; see
:mod:`.buildtree` for where a build directory keeps them). Its target arch
(:mod:`.arch`) is the ``qemu-system-*`` it has, or the one chosen: ``DIR:ARCH``
for ``--qemu-build``, ``--qb-arch`` for the default build.

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
from functools import partial
from pathlib import Path

from . import arch as arch_mod
from .arch import REFERENCE, Arch, ArchError
from .binaries import BINARIES, MIN_VERSION, SPEC_BY_ROLE, Binary, BinarySpec, BuildError, check_binary
from .buildtree import BuildTree, find_program, open_tree, searched

__all__ = ["BINARIES", "MIN_VERSION", "SPEC_BY_ROLE", "Binary", "BinarySpec", "BuildError", "QemuBuild"]

#: the option that lets a build directory's missing binaries come from PATH
ALLOW_MIXED = "--qb-allow-mixed-build"
_MIXED_SOURCE = f"PATH, mixed in by {ALLOW_MIXED}"


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
            raise BuildError(f"build {self.name!r} has no {_filename(role, self.arch)}: "
                             f"{self.missing.get(role, 'not found')}") from None

    def describe(self) -> list[str]:
        lines = [f"qemu build {self.name!r}: QEMU {self.version_str}"
                 + (f" ({_env_text(self.env)})" if self.env else ""),
                 f"  {'arch':<21} {self.arch.name} (device cases on -M {self.arch.device_machine})"]
        for spec in BINARIES:
            b = self.binaries.get(spec.role)
            filename = _filename(spec.role, self.arch)
            if b is not None:
                own = f" ({_env_text(b.env) or 'its own modules'})" if b.env != self.env else ""
                lines.append(f"  {filename:<21} {b.path}  [{b.source}]{own}")
            else:
                lines.append(f"  {filename:<21} missing: {self.missing.get(spec.role)}")
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
    """Resolve the default build by the documented precedence chain and mixing rule.

    Its arch: ``--qb-arch`` (ini ``qb_arch``), else the name of a qemu-system
    given explicitly, else the one ``--qemu-build-dir`` holds, else x86_64.
    """
    environ = dict(os.environ if environ is None else environ)
    tree = _check_build_dir(build_dir) if build_dir else None
    chosen = _chosen_arch(get_option("--qb-arch") or get_ini("qb_arch"))
    arch = chosen or (_dir_arch(tree.find, f"--qemu-build-dir {build_dir}") if tree
                      else arch_mod.ARCHES[REFERENCE])
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
        if spec.role == "system" and found is not None:
            arch = _explicit_arch(found, chosen) or arch
        if found is None and tree is not None:
            p = tree.find(_filename(spec.role, arch))
            if p is not None:
                found = (p, f"--qemu-build-dir {tree.root}")
                from_tree.add(spec.role)
            elif not allow_mixed:
                absent.append(spec)
                continue
        if found is None:
            found = _on_path(spec, arch, tree, "PATH" if tree is None else _MIXED_SOURCE, missing)
        if found is not None:
            candidates[spec.role] = found
    if tree is not None and absent:
        raise BuildError(_absent(f"QEMU build directory {tree.root}", tree, arch, absent,
                                 "/".join(s.option for s in absent)))
    name = arch.name if name == "default" and arch.name != REFERENCE else arch_mod.label(name, arch)
    return _validate(name, arch, candidates, missing, tree, from_tree)


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


def resolve_named_build(spec: str, allow_mixed: bool = False) -> QemuBuild:
    """Resolve ``[NAME=]DIR[:ARCH]`` (a build tree or a ``dpkg -x`` root): every
    binary from DIR, or with *allow_mixed* from PATH if DIR lacks it."""
    name, directory, arch_name = split_build_spec(spec)
    tree = _check_build_dir(directory)
    arch = arch_mod.get(arch_name) if arch_name else _dir_arch(tree.find, f"--qemu-build {spec}")
    name = arch_mod.label(name, arch)
    candidates: dict[str, tuple[Path, str]] = {}
    missing: dict[str, str] = {}
    absent = []
    for b in BINARIES:
        p = tree.find(_filename(b.role, arch))
        if p is not None:
            candidates[b.role] = (p, f"--qemu-build {name}")
        elif not allow_mixed:
            absent.append(b)
        else:
            found = _on_path(b, arch, tree, _MIXED_SOURCE, missing)
            if found is not None:
                candidates[b.role] = found
    if absent:
        raise BuildError(_absent(f"--qemu-build {name}: {tree.root}", tree, arch, absent, None))
    return _validate(name, arch, candidates, missing, tree,
                     {r for r, (_, src) in candidates.items() if src != _MIXED_SOURCE})


def build_labels(build_specs: Sequence[str]) -> list[tuple[str, Arch]]:
    """The name (as test ids show it) and arch of each ``--qemu-build`` spec.

    Collection needs them on every xdist worker, identically: they depend on the
    spec and on which qemu-system-* files its directory holds, nothing run.
    """
    out = []
    for spec in build_specs:
        name, directory, arch_name = split_build_spec(spec)
        try:
            # which qemu-system-* files it holds, nothing more (no module or firmware search)
            arch = arch_mod.get(arch_name) if arch_name else _dir_arch(
                partial(find_program, Path(os.path.expanduser(directory))), spec)
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


def _dir_arch(find: Callable[[str], Path | None], where: str) -> Arch:
    """The arch of the qemu-system-* a directory holds (*find*: a program's path in it, or
    None): x86_64 if it has it, else its only one."""
    present = [a for a in arch_mod.ARCHES.values() if find(a.system_binary)]
    if not present:
        raise BuildError(f"{where}: no qemu-system-ARCH for an arch in {', '.join(sorted(arch_mod.ARCHES))}")
    if any(a.name == REFERENCE for a in present) or len(present) == 1:
        return next((a for a in present if a.name == REFERENCE), present[0])
    names = ", ".join(a.system_binary for a in present)
    raise BuildError(f"{where}: holds {names}; choose one with DIR:ARCH (--qemu-build) or --qb-arch")


def _on_path(spec: BinarySpec, arch: Arch, tree: BuildTree | None, source: str,
             missing: dict[str, str]) -> tuple[Path, str] | None:
    w = shutil.which(_filename(spec.role, arch))
    if w:
        return Path(w), source
    where = "on PATH" if tree is None else f"in {tree.root} nor on PATH"
    package = arch.debian_package if spec.role == "system" else spec.debian_package
    missing[spec.role] = (f"not found {where} (install Debian package {package}, "
                          f"or pass {spec.option} / set {spec.env})")
    return None


def _absent(what: str, tree: BuildTree, arch: Arch, absent: list[BinarySpec],
            options: str | None) -> str:
    """One line: which binaries the build directory lacks, where, and the ways out."""
    names = ", ".join(_filename(s.role, arch) for s in absent)
    paths = ", ".join(str(tree.expected(_filename(s.role, arch))) for s in absent)
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
    systems = [a.system_binary for a in arch_mod.ARCHES.values()]
    tree = next((t for t in (open_tree(root.resolve(), s) for s in systems) if t), None)
    if tree is None:
        looked = ", ".join(map(str, searched(root, "qemu-system-*")))
        raise BuildError(f"QEMU build directory {directory!r} is unusable: no {' or '.join(systems)} "
                         f"(looked at {looked}); build QEMU there first or pass the right directory")
    return tree


def _validate(name: str, arch: Arch, candidates: dict[str, tuple[Path, str]],
              missing: dict[str, str], tree: BuildTree | None, from_tree: set[str]) -> QemuBuild:
    """Check every binary; those in *from_tree* run with the tree's environment."""
    binaries: dict[str, Binary] = {}
    for role, (path, source) in candidates.items():
        env = tree.env if tree is not None and role in from_tree else {}
        binaries[role] = check_binary(_filename(role, arch), role, path, source, env)
    for spec in BINARIES:
        if spec.required and spec.role not in binaries:
            raise BuildError(f"{_filename(spec.role, arch)} {missing[spec.role]}")
    # Firmware and the build's environment go with its qemu-system: forcing a tree's
    # modules on a qemu-system of another build aborts it (QEMU 7.2 on 10.0's block-iscsi.so:
    # module_load_dso() asserts).
    own = tree if tree is not None and "system" in from_tree else None
    build = QemuBuild(name, binaries, own.env if own else {}, missing,
                      own.system_args if own else (), arch)
    if build.version < MIN_VERSION:
        raise BuildError(
            f"{binaries['system'].path} is QEMU {build.version_str}: too old, auto-read-only "
            f"needs QEMU {'.'.join(map(str, MIN_VERSION[:2]))} or newer")
    return build


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
