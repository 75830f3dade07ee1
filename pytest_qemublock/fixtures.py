"""The plugin's fixtures (registered by plugin.py; documented in docs/writing-suites.md).

Requesting any of them activates the session (see session.py): the plugin
reaps, journals and handles SIGTERM only in runs that use it.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from . import reproduce
from .evidence import TestEvidence, safe_name
from .host.journal import StateDirError
from .qemu import build as build_mod
from .qemu import crashes
from .qemu.build import BuildError
from .qemu.capabilities import Capabilities
from .qemu.context import RunContext
from .qemu.factory import QemuFactory
from .qemu.probing import ProbeError
from .session import (
    EVIDENCE_KEY,
    FAILED_KEY,
    OUTCOME_KEY,
    SESSION_KEY,
    WORKDIR_KEY,
    QemuBlockSession,
)
from .storage.images import ImageFactory, Tools

if TYPE_CHECKING:
    from .backends.pool import TargetPool
    from .backends.provisioner import Provisioner


@pytest.fixture(scope="session")
def qb_session(pytestconfig: pytest.Config) -> QemuBlockSession:
    """The plugin's session state (builds, registry, directories, timeouts)."""
    session = pytestconfig.stash[SESSION_KEY]
    try:
        session.activate()
    except StateDirError as e:
        pytest.exit(f"qemublock: {e}", returncode=pytest.ExitCode.USAGE_ERROR)
    return session


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

    check_requirements(request.node, build, lambda: _capabilities(qb_session, build))
    return build


@pytest.fixture
def qemu_caps(qemu_build: build_mod.QemuBuild, qb_session: QemuBlockSession) -> Capabilities:
    """Probed :class:`~pytest_qemublock.qemu.capabilities.Capabilities` of the build under test."""
    return _capabilities(qb_session, qemu_build)


def _capabilities(session: QemuBlockSession, build: build_mod.QemuBuild) -> Capabilities:
    """The build's capabilities; a build that cannot be probed stops the run with one line
    (without start-up validation: the first test that needs them)."""
    try:
        return session.capabilities(build)
    except ProbeError as e:
        pytest.exit(f"qemublock: {e}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture
def qb_evidence(request: pytest.FixtureRequest, qb_session: QemuBlockSession) -> Iterator[TestEvidence]:
    """This test's evidence collector (work dir, logs, QMP transcripts)."""
    workdir = qb_session.new_workdir(request.node.nodeid)
    evidence = TestEvidence(workdir, request.node.nodeid)
    request.node.stash[EVIDENCE_KEY] = evidence
    yield evidence
    settings = qb_session.settings
    failed = request.node.stash.get(FAILED_KEY, False)
    outcome = request.node.stash.get(OUTCOME_KEY, "failed" if failed else "")
    if settings.retention == "all" or (outcome and settings.retention == "failed"):
        dest = evidence.keep(qb_session.evidence_root() / safe_name(request.node.nodeid))
        if outcome:  # a failure or a known bug (xfail): how to show it with plain QEMU
            reproduce.write(dest, case=request.node.nodeid, outcome=outcome, env=evidence.replay_env)
    if not settings.keep_workdirs:
        request.node.stash[WORKDIR_KEY] = workdir


@pytest.fixture
def qb_context(request: pytest.FixtureRequest, qemu_build: build_mod.QemuBuild, qemu_caps: Capabilities,
               qb_session: QemuBlockSession, qb_evidence: TestEvidence) -> Iterator[RunContext]:
    """What this test's helpers share: build, capabilities, registry, evidence,
    timeouts, work and socket directories. Its :class:`~.qemu.crashes.CrashWatch`
    fails the test for any death of the build's processes (plugin.py, outcome checks)."""
    watch = crashes.CrashWatch(qemu_build, qb_evidence)
    qb_evidence.replay_env.update(_replay_env(qb_session, qemu_build))
    request.node.stash[crashes.WATCH_KEY] = watch
    with crashes.watching(watch):
        yield RunContext(qemu_build, qemu_caps, qb_session.registry, qb_evidence,
                         qb_session.timeouts, qb_session.sockdir)


def _replay_env(session: QemuBlockSession, build: build_mod.QemuBuild) -> dict[str, object]:
    """What reproduce.py turns into script variables: the run's directories and the build."""
    roots = {str(session.root): "$W"}
    if not str(session.sockdir).startswith(str(session.root) + "/"):
        roots[str(session.sockdir)] = "$W/s"
    specs = [spec for spec in build_mod.BINARIES if build.has(spec.role)]
    args = build.system_args
    return {"roots": roots,
            "programs": {str(build.path(s.role)): s.env for s in specs},
            "program_defaults": {s.env: str(build.path(s.role)) for s in specs},
            "data_dir": args[args.index("-L") + 1] if "-L" in args else "",
            "module_dir": build.env.get("QEMU_MODULE_DIR", ""),
            "build": f"{build.name}: QEMU {build.version_str}"}


@pytest.fixture
def qemu(request: pytest.FixtureRequest, qb_context: RunContext) -> Iterator[QemuFactory]:
    """Start QEMUs (``qemu.start(...)``, ``qemu.start_qsd(...)``); stopped at teardown."""
    qb_context.evidence.note(build=f"{qb_context.build.name} ({qb_context.build.version_str})")
    factory = QemuFactory(qb_context)
    yield factory
    problems = factory.shutdown_all()
    if problems:
        # qb_evidence tears down after us: make it keep this test's evidence
        request.node.stash[FAILED_KEY] = True
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def qemu_tools(qb_context: RunContext, qb_session: QemuBlockSession) -> Tools:
    """qemu-img / qemu-io of the build under test, logged into the evidence."""
    return Tools(qb_context, template_dir=qb_session.root / "templates" / qb_context.build.name)


@pytest.fixture
def images(qemu_tools: Tools, qb_evidence: TestEvidence) -> ImageFactory:
    """Creates images on plain writable storage in the test's work dir."""
    d = qb_evidence.workdir / "img"
    d.mkdir(exist_ok=True)
    return ImageFactory(qemu_tools, d)


@pytest.fixture(scope="module")
def qb_target_pool(request: pytest.FixtureRequest, qb_session: QemuBlockSession) -> Iterator[TargetPool]:
    """Targets shared by a module's open-and-close cases (``targets.shared``)."""
    from .backends.pool import TargetPool

    pool = TargetPool(request.node.nodeid, qb_session.new_workdir, qb_session.settings.keep_workdirs)
    yield pool
    problems = pool.close()
    if problems:
        pytest.fail("cleanup of shared targets failed: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def targets(qb_context: RunContext, qemu_tools: Tools,
            qb_target_pool: TargetPool) -> Iterator[Provisioner]:
    """Provide protocol nodes: ``targets.target(backend, storage, recipe)`` (servers
    stopped after the test) or ``targets.shared(...)`` (kept for the module)."""
    from .backends.provisioner import new_provisioner

    prov = new_provisioner(qb_context, qemu_tools, qb_target_pool)
    yield prov
    problems = prov.close()
    if problems:
        pytest.fail("cleanup failed: " + "; ".join(problems), pytrace=False)
