"""The reporting plugin object: hooks that fold each item's reports into one
outcome, print the matrix and write ``--qb-results``.

Under pytest-xdist the workers only annotate their reports (processes started,
build versions); the controller, which receives every report, does the rest.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ..host.process import STARTED
from ..scenario.shards import empty_by_design
from .fold import CaseResult, Cells, case_build, matrix_cells
from .html import write_html
from .results import RunInfo, results_document, write_results
from .summarize import can_encode, summarize


def shard_line(info: dict[str, Any]) -> str:
    """What this shard of a sharded run (``--qb-shard``) took."""
    line = (f"qemublock: shard {info['index']}/{info['total']}: {info['selected']} of "
            f"{info['cases']} cases, balanced by {info['balanced_by']}")
    if empty_by_design(info):
        line += (f"; nothing to run: {info['groups']} sharing groups (module x build x backend) "
                 f"for {info['total']} shards")
    return line


def addoption(group: Any) -> None:
    """Register the report options on the plugin's option group."""
    group.addoption("--qb-results", metavar="FILE", default=None,
                    help="write every case's outcome, coordinates (qb.* properties), duration "
                         "and the processes it started, plus the matrix counts and build "
                         "versions, as JSON to FILE (compare two with qemublock-diff)")
    group.addoption("--qb-html", metavar="FILE", default=None,
                    help="write a self-contained HTML page: the matrix as a colour map, the "
                         "differences between builds and every failed, erroring or xfailed case "
                         "with its expectation and evidence (from a results file: qemublock-html)")
    group.addoption("--qb-no-summary", action="store_true", default=False,
                    help="do not print the scenario x backend matrix at the end of the run")


class MatrixReport:
    """Collects one outcome per item; prints the matrix; writes ``--qb-results``."""

    def __init__(self, config: pytest.Config,
                 resolved_builds: Callable[[], Sequence[Any]] = lambda: ()) -> None:
        self.config = config
        #: the builds this process has resolved (never resolves one just for the report)
        self._resolved_builds = resolved_builds
        self.is_worker = hasattr(config, "workerinput")
        self.results_path: str | None = config.getoption("--qb-results", None)
        self.html_path: str | None = config.getoption("--qb-html", None)
        self.show_summary = not config.getoption("--qb-no-summary", False)
        #: processes are counted per case only for the results file (and the page made of it)
        self.counting = bool(self.results_path or self.html_path)
        self.cases: dict[str, CaseResult] = {}
        self.collect_errors: list[str] = []
        self.session_procs: Counter[str] = Counter()
        self.builds: dict[str, dict[str, Any]] = {}
        self.workers = 0
        self.started = time.time()
        self.duration = 0.0
        self.exitstatus: int | None = None
        self.written: list[tuple[str, Path]] = []
        self.write_errors: list[str] = []
        #: this run's part of a sharded run (set at collection, by the workers under xdist)
        self.shard: dict[str, Any] | None = None

    # -- lifecycle ---------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.started = time.time()
        if self.counting:
            STARTED.take()  # started at configure time (build --version): nobody's

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        # Whatever ran between items (collection, session set-up) is not a case's.
        if self.counting and not self.is_worker_proxy:
            self.session_procs.update(STARTED.take())

    @property
    def is_worker_proxy(self) -> bool:
        # On an xdist controller logstart is replayed from the workers' events.
        return not self.is_worker and self.workers > 0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        rep = yield
        if self.counting:
            started = STARTED.take()
            if started:
                rep.qb_procs = started  # travels to the xdist controller with the report
        return rep

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:  # xdist controller only
        self.workers += 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:  # xdist controller only
        out = getattr(node, "workeroutput", None) or {}
        for name, info in (out.get("qemublock_builds") or {}).items():
            self.builds.setdefault(name, info)
        self.session_procs.update(out.get("qemublock_session_procs") or {})
        if out.get("qemublock_shard") and self.shard is None:
            self.shard = out["qemublock_shard"]  # every worker cut the same collection

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(report.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        case = self.cases.get(report.nodeid)
        if case is None:
            case = self.cases[report.nodeid] = CaseResult(report.nodeid)
        case.add(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.duration = time.time() - self.started
        self.exitstatus = int(session.exitstatus)  # as corrected by hook wrappers (an empty shard)
        if self.counting:
            self.session_procs.update(STARTED.take())
        for name, info in self._local_builds().items():
            self.builds.setdefault(name, info)
        if self.is_worker:
            out = self.config.workeroutput  # type: ignore[attr-defined]
            out["qemublock_builds"] = self.builds
            out["qemublock_session_procs"] = dict(self.session_procs)
            out["qemublock_shard"] = self.shard
            return
        self._junit_properties()
        if not (self.results_path or self.html_path):
            return
        document = self.results()
        for what, option, write in (("results", self.results_path, write_results),
                                    ("report", self.html_path, write_html)):
            if not option:
                continue
            path = self.config.invocation_params.dir / option
            try:
                write(path, document)
                self.written.append((what, path))
            except OSError as e:
                self.write_errors.append(f"cannot write {path}: {e}")

    # -- helpers -------------------------------------------------------------------
    def build_order(self) -> list[str]:
        from ..qemu.build import build_names

        return build_names(self.config.getoption("--qemu-build", None) or [])

    def _local_builds(self) -> dict[str, dict[str, Any]]:
        """Builds this process has resolved (never resolves one just for the report)."""
        out = {}
        for b in self._resolved_builds():
            try:
                out[b.name] = {"version": b.version_str, "arch": b.arch.name,
                               "qemu_system": str(b.binaries["system"].path),
                               "version_line": b.binaries["system"].version_line}
            except Exception:  # noqa: BLE001 - a report must not fail the run
                continue
        return out

    def _junit_properties(self) -> None:
        # Private API on purpose: the public record_testsuite_property fixture
        # does not reach the XML under xdist (pytest#7767), and the build
        # versions are only known here, on the controller, after the workers ended.
        try:
            from _pytest.junitxml import xml_key
        except ImportError:  # pragma: no cover - pytest internals moved
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        for name, info in self.builds.items():
            xml.add_global_property(f"qb.build.{name}", f"QEMU {info.get('version', '?')}")

    def case_build(self, case: CaseResult) -> str:
        return case_build(case, self.build_order(), self.builds)

    def qb_cases(self) -> list[CaseResult]:
        return [c for c in self.cases.values() if c.has_axes and c.outcome is not None]

    def matrix(self) -> Cells:
        return matrix_cells(self.cases.values(), self.case_build)

    def results(self) -> dict[str, Any]:
        """The ``--qb-results`` document of this run."""
        run = RunInfo(started=self.started, duration=self.duration, exitstatus=self.exitstatus,
                      args=[str(a) for a in self.config.invocation_params.args],
                      workers=self.workers, build_order=self.build_order(), builds=self.builds,
                      session_procs=self.session_procs, counted=self.counting,
                      collect_errors=self.collect_errors, shard=self.shard)
        case_builds = {nodeid: self.case_build(case) for nodeid, case in self.cases.items()}
        return results_document(self.cases, case_builds, self.matrix(), run)

    # -- terminal output ------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int,
                                config: pytest.Config) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        if self.show_summary and self.qb_cases():
            tw = config.get_terminal_writer()
            summary = summarize(self.results(), self.results_path, max(60, tw.fullwidth),
                                can_encode(tw))
            if summary is not None:
                tr.ensure_newline()
                summary.write(tw)
        if self.shard is not None:
            tr.write_line(shard_line(self.shard))
        for what, path in self.written:
            tr.write_line(f"qemublock: {what} written to {path}")
        for error in self.write_errors:
            tr.write_line(f"qemublock: {error}", red=True)
