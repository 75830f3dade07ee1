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
from .qemu import build as build_mod
from .qemu.build import BuildError, QemuBuild, resolve_default_build
from .reporting import plugin as report


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
    group.addoption("--qemu-build", metavar="[NAME=]DIR", action="append", default=[],
                    help="test this build (repeatable); every case runs once per build and the "
                         "test id starts with NAME (default: the directory's name)")
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
    report.addoption(group)
    parser.addini("qemublock", "validate the QEMU build(s) at start-up (true in projects "
                               "whose tests need QEMU)", type="bool", default=False)


def wanted(config: pytest.Config) -> bool:
    """Whether this run uses the plugin from the start: a QEMU option or the ini flag."""
    opt = config.getoption
    return bool(config.getini("qemublock") or opt("--qemu-build") or opt("--qemu-build-dir")
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


def _check_writable_dir(path: Path, option: str) -> None:
    """Create *path* if needed and prove a file can be made in it, or refuse the run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise pytest.UsageError(f"qemublock: {option}={path}: cannot write there: "
                                f"{e.strerror or e}") from None
