"""Command-line options and ini values, and :class:`Settings`, what they mean once parsed.

Bad input is refused here, at start-up, with one line (pytest's usage error,
exit 4): a wrong timeout factor or evidence directory found by the first case
would cost a whole run.
"""
from __future__ import annotations

import math
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .evidence import RETENTION
from .qemu import arch as arch_mod
from .qemu import build as build_mod
from .qemu.build import BuildError, QemuBuild, resolve_default_build
from .reporting import plugin as report
from .reporting.durations import load_durations
from .reporting.results import ResultsError
from .scenario.shards import Estimate, ShardSpec, ShardSpecError


def addoption(parser: pytest.Parser) -> None:
    """The plugin's options and ini values (``pytest --help``: group pytest-qemublock)."""
    group = parser.getgroup("qemublock", "pytest-qemublock: QEMU build under test")
    for spec in build_mod.BINARIES:
        group.addoption(spec.option, metavar="PATH", default=None,
                        help=f"{spec.filename} to test (else ${spec.env}, ini {spec.ini}, "
                             f"--qemu-build-dir, PATH)")
        parser.addini(spec.ini, f"path of {spec.filename} (below CLI and ${spec.env})")
    group.addoption("--qemu-build-dir", metavar="DIR", default=None,
                    help="a QEMU build tree (e.g. ~/qemu/build) or `dpkg -x` root: every binary "
                         "not set explicitly comes from there, with its own block modules "
                         "(QEMU_MODULE_DIR) and firmware (-L)")
    parser.addini("qemu_build_dir", "default for --qemu-build-dir")
    group.addoption("--qemu-build", metavar="[NAME=]DIR[:ARCH]", action="append", default=[],
                    help="test this build (repeatable); every case runs once per build and the "
                         "test id starts with NAME (default: the directory's name), plus -ARCH "
                         "for a target other than x86_64; ARCH: which qemu-system-ARCH of DIR "
                         f"to test ({', '.join(sorted(arch_mod.ARCHES))}; default: x86_64 if "
                         "DIR has it, else the one it has)")
    group.addoption("--qb-arch", metavar="ARCH", default=None,
                    help="target of the default build: which qemu-system-ARCH to take from "
                         "--qemu-build-dir or PATH (default: x86_64, or what --qemu-system "
                         "is named; ini qb_arch)")
    parser.addini("qb_arch", "default for --qb-arch")
    group.addoption(build_mod.ALLOW_MIXED, action="store_true",
                    help="take the binaries a build directory lacks from PATH instead of "
                         "refusing the run (the header marks them)")
    group.addoption("--qb-timeout-factor", type=float, default=None, metavar="F",
                    help="multiply every timeout (QMP, events, start-up, tools) by F > 0, e.g. "
                         "for ASan or valgrind builds (default 1, ini qb_timeout_factor)")
    parser.addini("qb_timeout_factor", "default for --qb-timeout-factor")
    group.addoption("--qb-evidence", choices=RETENTION, default="failed",
                    help="keep command lines, process output and QMP transcripts of "
                         "failed tests (default), all tests, or none")
    group.addoption("--qb-evidence-dir", metavar="DIR", default=None,
                    help="where kept evidence goes (default: <rootdir>/qemublock-evidence; the "
                         "first test of a run that keeps evidence clears the previous run's)")
    group.addoption("--qb-basetemp", metavar="DIR", default=None,
                    help="directory for images and work files (default: /dev/shm if it is a "
                         "tmpfs with 1 GiB free, else $TMPDIR or /tmp; a fresh qb-* dir per "
                         "pytest process below it); spaces and commas are fine; a run "
                         "needs about 256 MiB free there")
    group.addoption("--qb-keep-workdirs", action="store_true",
                    help="do not delete images and work files at the end of the run")
    group.addoption("--backend", action="append", metavar="GLOB[,GLOB]",
                    help="run only these backends, e.g. 'file', 'nbd-*', 'file-erofs' "
                         "(repeatable; see --qb-list-backends)")
    group.addoption("--qb-list-backends", action="store_true",
                    help="list the backends, their storages and whether this host can run them, then exit")
    group.addoption("--qb-expectations", action="store_true",
                    help="print the expected-behaviour tables (docs/expectations.md) of the build(s), "
                         "generated from the expectations, then exit")
    group.addoption("--format", action="append", metavar="FMT[,FMT]",
                    help="run only these image formats (raw, qcow2, chain, proto)")
    group.addoption("--interface", action="append", metavar="IFACE[,IFACE]",
                    help="run only these interfaces (blockdev, drive, qmp, qsd)")
    group.addoption("--qb-shard", metavar="K/N", default=None,
                    help="run only shard K of N (1 <= K <= N): every runner cuts the same "
                         "collection the same way, never splitting a module's cases of one "
                         "build and backend; merge the shards' --qb-results with qemublock-merge")
    group.addoption("--qb-shard-durations", metavar="FILE", default=None,
                    help="balance the shards by the case durations in FILE (a --qb-results file "
                         "or qemublock-durations' output; default: ini qb_shard_durations, else "
                         "by case count)")
    parser.addini("qb_shard_durations", "default for --qb-shard-durations (relative to the ini file)")
    report.addoption(group)
    parser.addini("qemublock", "validate the QEMU build(s) at start-up (true in projects "
                               "whose tests need QEMU)", type="bool", default=False)


#: the parsed ``--qb-shard`` of this run, when given
SHARD_KEY = pytest.StashKey["ShardPlan"]()


@dataclass(frozen=True)
class ShardPlan:
    """``--qb-shard`` and what balances it."""

    spec: ShardSpec
    estimate: Estimate | None
    balanced_by: str


def shard_plan(config: pytest.Config) -> ShardPlan | None:
    """The run's ``--qb-shard``, with the durations it is balanced by; one line, exit 4, for a
    malformed K/N or an unreadable durations file."""
    text = config.getoption("--qb-shard")
    option = config.getoption("--qb-shard-durations")
    if text is None:
        if option:
            raise pytest.UsageError("qemublock: --qb-shard-durations needs --qb-shard K/N")
        return None
    try:
        spec = ShardSpec.parse(text)
    except ShardSpecError as e:
        raise pytest.UsageError(f"qemublock: {e}") from None
    if option:
        path, source = config.invocation_params.dir / option, "--qb-shard-durations"
    elif config.getini("qb_shard_durations"):
        base = config.inipath.parent if config.inipath else config.rootpath
        path, source = base / str(config.getini("qb_shard_durations")), "ini qb_shard_durations"
    else:
        return ShardPlan(spec, None, "case count")
    try:
        durations = load_durations(str(path))
    except ResultsError as e:
        raise pytest.UsageError(f"qemublock: {source}: {e}") from None
    return ShardPlan(spec, durations.estimate, f"durations of {path.name}")


def wanted(config: pytest.Config) -> bool:
    """Whether this run uses the plugin from the start: a QEMU option or the ini flag."""
    opt = config.getoption
    return bool(config.getini("qemublock") or opt("--qemu-build") or opt("--qemu-build-dir")
                or opt("--qb-arch")
                or any(opt(s.option) for s in build_mod.BINARIES))


@dataclass
class Settings:
    """Options after parsing; see :func:`addoption` for their help."""

    build_specs: list[str]
    default_build: Callable[[], QemuBuild]
    allow_mixed_build: bool
    timeout_factor: float
    basetemp: str | None
    evidence_dir: Path
    retention: str
    cache_dir: Path
    worker_id: str
    keep_workdirs: bool = False
    #: one id per pytest run, the same on every xdist worker
    run_uid: str = ""

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Options, then ini, then defaults; xdist workers get their own worker id.

        Raises :class:`pytest.UsageError` (one line, exit 4) for bad values.
        """
        opt = config.getoption
        # workerinput, not $PYTEST_XDIST_WORKER: a pytest started *from* a
        # worker (pytester) inherits the variable but is no worker itself.
        workerinput = getattr(config, "workerinput", None) or {}
        worker = workerinput.get("workerid", "main")
        evidence_opt = opt("--qb-evidence-dir")
        evidence_dir = Path(evidence_opt or config.rootpath / "qemublock-evidence")
        if evidence_opt and opt("--qb-evidence") != "none":
            _check_writable_dir(evidence_dir, "--qb-evidence-dir")
        for spec in opt("--qemu-build"):
            try:
                build_mod.split_build_spec(spec)
            except BuildError as e:
                raise pytest.UsageError(f"qemublock: {e}") from None
        arch = opt("--qb-arch") or config.getini("qb_arch")
        try:
            if arch:
                arch_mod.get(arch)
        except arch_mod.ArchError as e:
            source = "--qb-arch" if opt("--qb-arch") else "ini qb_arch"
            raise pytest.UsageError(f"qemublock: {source}: {e}") from None

        def default_build() -> QemuBuild:
            return resolve_default_build(
                opt, lambda i: config.getini(i) or None,
                opt("--qemu-build-dir") or config.getini("qemu_build_dir") or None,
                allow_mixed=opt(build_mod.ALLOW_MIXED))

        cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
        return cls(
            build_specs=list(opt("--qemu-build")),
            default_build=default_build,
            allow_mixed_build=opt(build_mod.ALLOW_MIXED),
            timeout_factor=_timeout_factor(opt("--qb-timeout-factor"), config.getini("qb_timeout_factor")),
            basetemp=opt("--qb-basetemp"),
            evidence_dir=evidence_dir,
            retention=opt("--qb-evidence"),
            cache_dir=Path(cache.mkdir("qemublock")) if cache else evidence_dir / ".cache",
            worker_id=worker.replace("gw", "w"),
            keep_workdirs=opt("--qb-keep-workdirs"),
            run_uid=workerinput.get("testrunuid") or uuid.uuid4().hex,
        )


def _timeout_factor(option: float | None, ini: str | None) -> float:
    """The option, else the ini value, else 1; finite and > 0 (0 used to mean 1, -1 gave
    negative timeouts, nan and inf tracebacks)."""
    if option is not None:
        value, source = option, f"--qb-timeout-factor={option:g}"
    elif ini:
        source = f"ini qb_timeout_factor = {ini}"
        try:
            value = float(ini)
        except ValueError:
            raise pytest.UsageError(f"qemublock: {source}: not a number") from None
    else:
        return 1.0
    if not math.isfinite(value) or value <= 0:
        raise pytest.UsageError(f"qemublock: {source}: the timeout factor must be a finite number > 0")
    return value


def check_run_dirs(settings: Settings) -> None:
    """Refuse, in one line, a run whose evidence or probe-cache directory cannot be written.

    Only the explicit ``--qb-evidence-dir`` is checked while options are read; the
    default one (``qemublock-evidence/`` of the rootdir) is checked here, once the run
    is known to use the plugin: a user running the suites of a checkout they cannot
    write would otherwise meet a PermissionError traceback at the first probe.
    """
    if settings.retention != "none":
        _check_writable_dir(settings.evidence_dir, "--qb-evidence-dir",
                            hint="; pass --qb-evidence-dir DIR (a directory you can write)")
    _check_writable_dir(settings.cache_dir, "probe cache", hint="; pass --qb-evidence-dir DIR")


def _check_writable_dir(path: Path, option: str, hint: str = "") -> None:
    """Create *path* if needed and prove a file can be made in it, or refuse the run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise pytest.UsageError(f"qemublock: {option}={path}: cannot write there: "
                                f"{e.strerror or e}{hint}") from None
