"""pytest entry point: options, hooks and fixtures. Logic lives in the modules."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from .qemu import build as build_mod
from .scenario import matrix
from .reporting import report
from .qemu.build import BuildError
from .evidence import RETENTION, TestEvidence, safe_name
from .qemu.factory import QemuFactory
from .storage.images import ImageFactory, Tools
from .session import QemuBlockSession, Settings

if TYPE_CHECKING:
    from .backends.base import Provisioner

SESSION_KEY = pytest.StashKey[QemuBlockSession]()
EVIDENCE_KEY = pytest.StashKey[TestEvidence]()
FAILED_KEY = pytest.StashKey[bool]()
WORKDIR_KEY = pytest.StashKey[Path]()  # removed once the teardown report is made

MARKERS = {
    "qemu_requires(command=None, feature=None, driver=None, binary=None, accel=None)":
        "skip unless the build under test has this QMP command, QAPI feature "
        "('BlockdevOptions.file:dynamic-auto-read-only'), loadable driver, binary role or accelerator",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qemublock", "pytest-qemublock: QEMU build under test")
    for spec in build_mod.BINARIES:
        group.addoption(spec.option, metavar="PATH", default=None,
                        help=f"{spec.filename} to test (else ${spec.env}, ini {spec.ini}, "
                             f"--qemu-build-dir, PATH)")
        parser.addini(spec.ini, f"path of {spec.filename} (below CLI and ${spec.env})")
    group.addoption("--qemu-build-dir", metavar="DIR", default=None,
                    help="a QEMU build tree or `dpkg -x` root to take missing binaries from "
                         "(sets QEMU_MODULE_DIR when it holds block modules)")
    parser.addini("qemu_build_dir", "default for --qemu-build-dir")
    group.addoption("--qemu-build", metavar="[NAME=]DIR", action="append", default=[],
                    help="test this build (repeatable); every case runs once per build and the "
                         "test id starts with NAME (default: the directory's name)")
    group.addoption("--qb-timeout-factor", type=float, default=None, metavar="F",
                    help="multiply every timeout (QMP, events, start-up, tools) by F, e.g. for "
                         "ASan or valgrind builds (default 1, ini qb_timeout_factor)")
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
                         "pytest process below it); spaces and commas are fine")
    group.addoption("--qb-keep-workdirs", action="store_true",
                    help="do not delete images and work files at the end of the run")
    group.addoption("--backend", action="append", metavar="GLOB[,GLOB]",
                    help="run only these backends, e.g. 'file', 'nbd-*', 'file-erofs' "
                         "(repeatable; see --qb-list-backends)")
    group.addoption("--qb-list-backends", action="store_true",
                    help="list the backends, their storages and whether this host can run them, then exit")
    group.addoption("--format", action="append", metavar="FMT[,FMT]",
                    help="run only these image formats (raw, qcow2, chain, proto)")
    group.addoption("--interface", action="append", metavar="IFACE[,IFACE]",
                    help="run only these interfaces (blockdev, drive, qmp, qsd)")
    report.addoption(group)
    parser.addini("qemublock", "validate the QEMU build(s) at start-up (true in projects "
                               "whose tests need QEMU)", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")
    for name, text in matrix.iter_scenarios():
        config.addinivalue_line("markers", f"{name}: scenario: {text}")
    if config.option.help or config.option.version:
        return
    settings = Settings.from_config(config)
    session = QemuBlockSession(settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(
        report.MatrixReport(config, lambda: session.resolved_builds), "qemublock-report")
    if _wanted(config):
        try:
            session.builds
        except BuildError as e:
            raise pytest.UsageError(f"qemublock: {e}") from None


def _wanted(config: pytest.Config) -> bool:
    opt = config.getoption
    return bool(config.getini("qemublock") or opt("--qemu-build") or opt("--qemu-build-dir")
                or any(opt(s.option) for s in build_mod.BINARIES))


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.option.qb_list_backends:
        return None
    from .backends.base import describe_backends

    config._do_configure()
    try:
        session = config.stash[SESSION_KEY]
        try:
            build = session.builds[0]
        except BuildError as e:
            raise pytest.UsageError(f"qemublock: {e}") from None
        for line in describe_backends(build):
            print(line)
    finally:
        config._ensure_unconfigure()
    return 0


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return []
    lines = []
    if session.reaped:
        lines.append("qemublock: killed processes left by an earlier crashed run: "
                     + ", ".join(session.reaped))
    lines.append(session.sandbox_line)  # trust
    if session.removed_dirs:  # trust
        lines.append("qemublock: removed directories of dead runs: "
                     + ", ".join(session.removed_dirs))
    try:
        builds = session.builds
    except BuildError as e:
        return lines + [f"qemublock: no usable QEMU build: {e}"]
    for b in builds:
        lines += b.describe()
    lines.append(f"qemublock: work dir {session.root}, evidence ({session.settings.retention}) "
                 f"-> {session.settings.evidence_dir}, timeout factor {session.timeouts.factor:g}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    specs = metafunc.config.getoption("--qemu-build")
    if "qemu_build" in metafunc.fixturenames and len(specs) > 1:
        names = build_mod.build_names(specs)
        metafunc.parametrize("qemu_build", names, indirect=True, ids=names, scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    matrix.annotate_and_select(config, items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    rep = yield
    if rep.failed:
        item.stash[FAILED_KEY] = True
        evidence = item.stash.get(EVIDENCE_KEY, None)
        if evidence is not None:
            evidence.take_snapshots()
            session = item.config.stash[SESSION_KEY]
            dest = session.settings.evidence_dir / safe_name(item.nodeid)
            text = evidence.excerpt()
            if session.settings.retention != "none":
                text += f"\nfull evidence: {dest}"
            rep.sections.append(("qemublock evidence", text))
    if call.when == "teardown":
        # Only now: a teardown failure (QEMU found dead at shutdown) still
        # needs the logs for its snapshot and excerpt above.
        workdir = item.stash.get(WORKDIR_KEY, None)
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return rep


def pytest_sessionfinish(session: pytest.Session) -> None:
    qb = session.config.stash.get(SESSION_KEY, None)
    if qb is None:
        return
    leaked = qb.close()
    if leaked:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("qemublock: killed processes still running at session end: "
                          + ", ".join(leaked), yellow=True)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def qb_session(pytestconfig: pytest.Config) -> QemuBlockSession:
    """The plugin's session state (builds, registry, directories, timeouts)."""
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture
def qemu_build(request: pytest.FixtureRequest, qb_session: QemuBlockSession) -> build_mod.QemuBuild:
    """The QEMU build this test runs against (one per ``--qemu-build``)."""
    try:
        if hasattr(request, "param"):
            build = qb_session.build(request.param)
        else:
            build = qb_session.builds[0]
    except BuildError as e:
        pytest.exit(f"qemublock: {e}", returncode=pytest.ExitCode.USAGE_ERROR)
    from .qemu.requirements import check_requirements

    check_requirements(request.node, build, lambda: qb_session.capabilities(build))
    return build


@pytest.fixture
def qemu_caps(qemu_build: build_mod.QemuBuild, qb_session: QemuBlockSession):  # type: ignore[no-untyped-def]
    """Probed :class:`~pytest_qemublock.probe.Capabilities` of the build under test."""
    return qb_session.capabilities(qemu_build)


@pytest.fixture
def qb_evidence(request: pytest.FixtureRequest, qb_session: QemuBlockSession) -> Iterator[TestEvidence]:
    """This test's evidence collector (work dir, logs, QMP transcripts)."""
    workdir = qb_session.new_workdir(request.node.nodeid)
    evidence = TestEvidence(workdir, request.node.nodeid)
    request.node.stash[EVIDENCE_KEY] = evidence
    yield evidence
    settings = qb_session.settings
    failed = request.node.stash.get(FAILED_KEY, False)
    if settings.retention == "all" or (failed and settings.retention == "failed"):
        evidence.keep(qb_session.evidence_root() / safe_name(request.node.nodeid))
    if not settings.keep_workdirs:
        request.node.stash[WORKDIR_KEY] = workdir


@pytest.fixture
def qemu(request: pytest.FixtureRequest, qemu_build: build_mod.QemuBuild, qemu_caps,  # type: ignore[no-untyped-def]
         qb_session: QemuBlockSession, qb_evidence: TestEvidence) -> Iterator[QemuFactory]:
    """Start QEMUs (``qemu.start(...)``, ``qemu.start_qsd(...)``); stopped at teardown."""
    qb_evidence.note(build=f"{qemu_build.name} ({qemu_build.version_str})")
    factory = QemuFactory(qemu_build, qemu_caps, qb_session.registry, qb_evidence, qb_session.timeouts)
    yield factory
    problems = factory.shutdown_all()
    if problems:
        # qb_evidence tears down after us: make it keep this test's evidence
        request.node.stash[FAILED_KEY] = True
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def qemu_tools(qemu_build: build_mod.QemuBuild, qb_session: QemuBlockSession,
               qb_evidence: TestEvidence) -> Tools:
    """qemu-img / qemu-io of the build under test, logged into the evidence."""
    return Tools(qemu_build, qb_evidence, qb_session.timeouts,
                 template_dir=qb_session.root / "templates" / qemu_build.name)


@pytest.fixture
def images(qemu_tools: Tools, qb_evidence: TestEvidence) -> ImageFactory:
    """Creates images on plain writable storage in the test's work dir."""
    d = qb_evidence.workdir / "img"
    d.mkdir(exist_ok=True)
    return ImageFactory(qemu_tools, d)


@pytest.fixture(scope="module")
def qb_target_pool(request: pytest.FixtureRequest, qb_session: QemuBlockSession):  # type: ignore[no-untyped-def]
    """Targets shared by a module's open-and-close cases (``targets.shared``)."""
    from .backends.pool import TargetPool

    pool = TargetPool(qb_session, request.node.nodeid)
    yield pool
    problems = pool.close()
    if problems:
        pytest.fail("cleanup of shared targets failed: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def targets(qemu_build: build_mod.QemuBuild, qemu_caps, qb_session: QemuBlockSession,  # type: ignore[no-untyped-def]
            qb_evidence: TestEvidence, qemu_tools: Tools, qb_target_pool) -> Iterator["Provisioner"]:
    """Provide protocol nodes: ``targets.target(backend, storage, recipe)`` (servers
    stopped after the test) or ``targets.shared(...)`` (kept for the module)."""
    from .backends.base import new_provisioner
    from .backends.server import ServerContext

    ctx = ServerContext(qemu_build, qb_session.registry, qb_evidence, qb_session.timeouts,
                        qb_session.sockdir)
    prov = new_provisioner(qemu_build, qemu_caps.accel, qemu_tools, ctx)
    prov.caps = qemu_caps  # backends whose driver is a module skip if it does not load
    prov.pool = qb_target_pool
    yield prov
    problems = prov.close()
    if problems:
        pytest.fail("cleanup failed: " + "; ".join(problems), pytrace=False)
