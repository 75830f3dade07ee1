"""pytest entry point: hooks only. Options and settings live in config.py, fixtures
in fixtures.py (registered below), logic in the modules."""
from __future__ import annotations

import shutil
from collections.abc import Generator

import pytest

from . import config as config_mod
from .evidence import safe_name
from .host.journal import StateDirError
from .qemu import crashes
from .qemu.build import BuildError
from .qemu.probing import ProbeError
from .reporting import plugin as report
from .scenario import matrix, shards
from .session import (
    EVIDENCE_KEY,
    FAILED_KEY,
    OUTCOME_KEY,
    SESSION_KEY,
    WORKDIR_KEY,
    QemuBlockSession,
    SpaceError,
    check_free_space,
)

pytest_plugins = ["pytest_qemublock.fixtures"]

# Scenario markers (open, reopen, ...) are the suites' own: suites/conftest.py.
MARKERS = {
    "qemu_requires(command=None, feature=None, driver=None, binary=None, accel=None)":
        "skip unless the build under test has this QMP command, QAPI feature "
        "('BlockdevOptions.file:dynamic-auto-read-only'), loadable driver, binary role or accelerator",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    config_mod.addoption(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs
    from .backends import registry

    pluginmanager.add_hookspecs(hookspecs)
    pluginmanager.register(registry, "qemublock-backends")  # the built-ins come through the hook too


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")
    if config.option.help or config.option.version:
        return
    from .backends import registry

    try:
        registry.fill_from_hook(config.hook.pytest_qemublock_backends(config=config))
    except registry.BackendRegistryError as e:
        raise pytest.UsageError(f"qemublock: {e}") from None
    matrix.check_selectors(config)
    plan = config_mod.shard_plan(config)
    if plan is not None:
        config.stash[config_mod.SHARD_KEY] = plan
    session = QemuBlockSession(config_mod.Settings.from_config(config))
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(
        report.MatrixReport(config, lambda: session.resolved_builds), "qemublock-report")
    if config_mod.wanted(config):
        try:
            config_mod.check_run_dirs(session.settings)
            session.activate()  # first: it removes dead runs' work dirs
            if session.settings.worker_id == "main":  # xdist workers: checked by the controller
                check_free_space(session.settings.basetemp)
            for build in session.builds:
                session.capabilities(build)  # a build that cannot be probed: one line, before any case
        except (BuildError, ProbeError, StateDirError, SpaceError) as e:
            raise pytest.UsageError(f"qemublock: {e}") from None


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    # Both exit before collection, with the builds resolved and probed as a run would.
    if not (config.option.qb_list_backends or config.option.qb_expectations):
        return None
    from .backends.registry import describe_backends
    from .reference.behaviour import document

    config._do_configure()
    try:
        session = config.stash[SESSION_KEY]
        try:
            builds = session.builds
        except BuildError as e:
            raise pytest.UsageError(f"qemublock: {e}") from None
        if config.option.qb_expectations:
            print(document([(b.name, session.capabilities(b)) for b in builds]), end="")
        else:
            for line in describe_backends(builds[0]):
                print(line)
    finally:
        config._ensure_unconfigure()
    return 0


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return []
    lines = []
    lines += _reap_lines(session)
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
    session = metafunc.config.stash.get(SESSION_KEY, None)
    names = session.build_ids() if session and "qemu_build" in metafunc.fixturenames else []
    if names:
        metafunc.parametrize("qemu_build", names, indirect=True, ids=names, scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    matrix.annotate_and_select(config, items)


# Last: the shard is cut from what -k, -m and every other selection left (pytest registers
# only names that start with pytest_; specname makes it a second impl of the same hook).
@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_last(config: pytest.Config, items: list[pytest.Item]) -> None:
    plan = config.stash.get(config_mod.SHARD_KEY, None)
    if plan is None:
        return
    cut = shards.cut(items, plan.spec, plan.estimate, plan.balanced_by)
    if cut.drop:
        config.hook.pytest_deselected(items=cut.drop)
        items[:] = cut.keep
    config.pluginmanager.getplugin("qemublock-report").shard = cut.info


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    # The watch is looked up after the body: a test that takes its QEMU fixtures with
    # request.getfixturevalue() during the call has none before it (its crash then
    # surfaced as a bare ProcessError and again as a teardown error).
    try:
        result = yield
    except (KeyboardInterrupt, pytest.exit.Exception):
        raise
    except BaseException as e:
        watch = item.stash.get(crashes.WATCH_KEY, None)
        if watch is not None:
            watch.after_call(e)  # a crash of the build's processes fails the case first
        raise
    watch = item.stash.get(crashes.WATCH_KEY, None)
    if watch is not None:
        watch.after_call(None)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.failed and OUTCOME_KEY not in item.stash:
        crash = getattr(rep.longrepr, "reprcrash", None)
        item.stash[OUTCOME_KEY] = f"failed ({rep.when}): " + (
            str(getattr(crash, "message", "")) or rep.longreprtext.strip()[-400:])
    elif rep.skipped and getattr(rep, "wasxfail", None) is not None:
        item.stash[OUTCOME_KEY] = f"xfailed: {rep.wasxfail}"
    xfailed = rep.skipped and hasattr(rep, "wasxfail")
    if rep.failed:
        item.stash[FAILED_KEY] = True
    evidence = item.stash.get(EVIDENCE_KEY, None)
    if evidence is not None and (rep.failed or xfailed):
        evidence.take_snapshots()
        session = item.config.stash[SESSION_KEY]
        retention = session.settings.retention
        # kept by the qb_evidence fixture for failed and known-bug cases (with reproduce.sh)
        kept = retention == "all" or (retention == "failed" and (rep.failed or xfailed))
        dest = session.settings.evidence_dir / safe_name(item.nodeid)
        # travels to the xdist controller with the report; reporting/ reads it
        rep.qb_evidence = evidence.record(dest if kept else None)  # type: ignore[attr-defined]
        if rep.failed:
            text = evidence.excerpt()
            if kept:
                text += f"\nfull evidence: {dest}"
            rep.sections.append(("qemublock evidence", text))
    if call.when == "teardown":
        # Only now: a teardown failure (QEMU found dead at shutdown) still
        # needs the logs for its snapshot and excerpt above.
        workdir = item.stash.get(WORKDIR_KEY, None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return rep


# A wrapper: before the results file records the exit status.
@pytest.hookimpl(wrapper=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_shard(session: pytest.Session) -> Generator[None, None, None]:
    report = session.config.pluginmanager.getplugin("qemublock-report")
    shard = report.shard if report is not None else None
    if shard and shards.empty_by_design(shard) and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
    return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    qb = session.config.stash.get(SESSION_KEY, None)
    if qb is None:
        return
    leaked = qb.close()
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    if not qb.reaped_reported:  # activated by a fixture, after the header
        for line in _reap_lines(qb):
            tr.write_line(line, yellow=True)
    if leaked:
        tr.write_line("qemublock: killed processes still running at session end: "
                      + ", ".join(leaked), yellow=True)


def _reap_lines(session: QemuBlockSession) -> list[str]:
    """What activation found and did: earlier runs' processes killed, journals not trusted,
    dead runs' dirs removed; whether children run in a sandbox."""
    if not session.active:
        return []
    session.reaped_reported = True
    lines = [f"qemublock: {w}" for w in session.reap_warnings]
    if session.reaped:
        lines.append("qemublock: killed processes left by an earlier crashed run: "
                     + ", ".join(session.reaped))
    if session.removed_dirs:
        lines.append("qemublock: removed directories of dead runs: " + ", ".join(session.removed_dirs))
    if session.sandbox_line:
        lines.append(session.sandbox_line)
    return lines
