"""The end-of-run matrix, the JSON results file and ``qemublock-diff``.

Suite items carry their coordinates as ``user_properties``: ``qb.scenario``,
``qb.backend``, ``qb.format``, ``qb.build`` and ``qb.interface`` (any may be
missing). :class:`MatrixReport` folds the setup/call/teardown reports of each
item into one outcome, prints a scenario x backend (x build) matrix at the end
of the terminal output and, with ``--qb-results FILE``, writes every case with
its outcome, coordinates, duration and the processes it started as JSON.
``qemublock-diff`` (:func:`diff_main`) compares two such files, or two builds
inside one. The format is described in ``docs/report.md``.

Under pytest-xdist the workers only annotate their reports (processes started,
build versions); the controller, which receives every report, does the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pytest

RESULTS_FORMAT = "qemublock-results"
RESULTS_VERSION = 1
PREFIX = "qb."
AXES = ("scenario", "backend", "format", "build", "interface")
MISSING = "-"

#: Outcomes, in the order the matrix cells list them.
OUTCOMES = ("passed", "failed", "error", "xpassed", "xfailed", "skipped")
FAILING = ("failed", "error")
PASSING = ("passed", "xpassed")
_SYMBOLS = {"passed": "✓", "failed": "F", "error": "E", "xpassed": "X", "xfailed": "x",
            "skipped": "s"}
_ASCII_SYMBOLS = {**_SYMBOLS, "passed": "p"}
_EMPTY, _ASCII_EMPTY = "·", "."
_ELLIPSIS, _ASCII_ELLIPSIS = "…", "~"

# Programs that only wrap the real one (storage providers use some of them).
_WRAPPERS = {"env", "nsenter", "setpriv", "unshare", "sudo", "timeout", "nice", "ionice",
             "chroot", "capsh", "runuser", "su", "stdbuf", "taskset", "setsid", "strace",
             "valgrind", "fakeroot", "exec", "command"}


def addoption(group: Any) -> None:
    """Register the report options on the plugin's option group."""
    group.addoption("--qb-results", metavar="FILE", default=None,
                    help="write every case's outcome, coordinates (qb.* properties), duration "
                         "and the processes it started, plus the matrix counts and build "
                         "versions, as JSON to FILE (compare two with qemublock-diff)")
    group.addoption("--qb-no-summary", action="store_true", default=False,
                    help="do not print the scenario x backend matrix at the end of the run")


# -- counting the processes each test starts ---------------------------------------
#
# Every child the plugin (or a suite) starts goes through subprocess.Popen, which
# raises the "subprocess.Popen" audit event. One audit hook per interpreter (they
# cannot be removed) feeds whichever counter is active.


class _ProcCounter:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def take(self) -> dict[str, int]:
        out = dict(self.counts)
        self.counts.clear()
        return out


_active_counter: _ProcCounter | None = None
_hook_installed = False


def program_name(executable: Any, args: Any) -> str:
    """The program a command line really runs, looking through wrappers like nsenter."""
    if isinstance(args, (str, bytes)):
        argv = [os.fsdecode(args).split()[0]] if args.strip() else []
    else:
        argv = [os.fsdecode(a) for a in (args or [])]
    if executable is not None and not argv:
        argv = [os.fsdecode(executable)]
    return _unwrap(argv)


def _unwrap(argv: list[str], depth: int = 0) -> str:
    if not argv or not argv[0].strip():
        return "?"
    first = os.path.basename(argv[0].split()[0])
    if depth > 4 or len(argv) < 2:
        return first
    if first in ("sh", "bash", "dash") and argv[1] == "-c" and len(argv) > 2:
        # sh -c 'PROGRAM ...': name PROGRAM if it is a QEMU (or a wrapper of one)
        try:
            words = shlex.split(argv[2])
        except ValueError:
            words = argv[2].split()
        inner = _unwrap(words, depth + 1) if words else first
        if not inner.startswith(("qemu", "nbdkit")) and "$@" in argv[2] and len(argv) > 4:
            # sh -c '... exec "$@"' NAME PROGRAM ARGS (socket activation and the like)
            inner = _unwrap(argv[4:], depth + 1)
        return inner if inner.startswith(("qemu", "nbdkit")) else first
    if first in _WRAPPERS:
        if "--" in argv:  # nsenter -t PID -m -- PROGRAM ...
            return _unwrap(argv[argv.index("--") + 1:], depth + 1)
        # Otherwise a QEMU among the plain arguments, else the first plain argument
        # that is a program (`unshare --propagation private true` runs `true`).
        plain = [a for a in argv[1:] if a and not a.startswith("-") and "=" not in a
                 and "," not in a and not a.isdigit()]
        for a in plain:
            if os.path.basename(a).startswith(("qemu", "nbdkit")):
                return os.path.basename(a)
        for a in plain:
            if shutil.which(a):
                return _unwrap(argv[argv.index(a):], depth + 1)
    return first


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        counter = _active_counter
        if counter is not None:
            try:
                counter.counts[program_name(args[0], args[1])] += 1
            except Exception:  # noqa: BLE001 - never break a Popen
                counter.counts["?"] += 1


def _activate_counter(counter: _ProcCounter | None) -> None:
    global _active_counter, _hook_installed
    _active_counter = counter
    if counter is not None and not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


def is_qemu(program: str) -> bool:
    return program.startswith("qemu")


# -- one outcome per test item ----------------------------------------------------------


@dataclass
class CaseResult:
    """What happened to one test item, folded from its setup/call/teardown reports."""

    nodeid: str
    properties: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    teardown_error: bool = False
    message: str = ""
    procs: Counter[str] = field(default_factory=Counter)
    worker: str = "main"
    finished: bool = False

    @property
    def duration(self) -> float:
        return sum(self.phases.values())

    def axis(self, name: str) -> str:
        value = self.properties.get(PREFIX + name)
        return MISSING if value in (None, "") else str(value)

    @property
    def has_axes(self) -> bool:
        return any(k.startswith(PREFIX) and k[len(PREFIX):] in AXES for k in self.properties)

    @property
    def qemu_procs(self) -> int:
        return sum(n for p, n in self.procs.items() if is_qemu(p))

    def add(self, rep: pytest.TestReport) -> None:
        when = rep.when or "???"
        if when == "setup" and self.finished:
            # The same id runs again (a rerun plugin): the last run counts.
            self.__init__(self.nodeid)  # type: ignore[misc]
        self.phases[when] = self.phases.get(when, 0.0) + float(rep.duration or 0.0)
        for key, value in rep.user_properties:
            self.properties[str(key)] = value if isinstance(value, (int, float, bool)) else str(value)
        self.procs.update(getattr(rep, "qb_procs", None) or {})
        worker = getattr(rep, "worker_id", None)
        if worker:
            self.worker = str(worker)
        outcome = phase_outcome(rep)
        if when == "teardown":
            self.finished = True
            if rep.failed:
                self.teardown_error = True
                if self.outcome not in FAILING:
                    self.outcome = "error"
                    self.message = self.message or _message(rep)
            if self.outcome is None:  # e.g. a crashed worker's item
                self.outcome = outcome
            return
        if outcome is None:
            return  # a passed setup: the call decides
        if self.outcome in FAILING and outcome not in FAILING:
            return
        self.outcome = outcome
        if outcome not in PASSING:
            self.message = _message(rep)
        if when == "???":  # xdist's report for an item whose worker crashed
            self.finished = True

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"outcome": self.outcome or "error"}
        for axis in AXES:
            d[axis] = self.axis(axis)
        d["properties"] = self.properties
        d["duration"] = round(self.duration, 6)
        d["phases"] = {k: round(v, 6) for k, v in self.phases.items()}
        if self.teardown_error:
            d["teardown_error"] = True
        if self.message:
            d["message"] = self.message
        d["qemu_procs"] = self.qemu_procs
        d["procs"] = dict(sorted(self.procs.items()))
        d["worker"] = self.worker
        return d


def phase_outcome(rep: pytest.TestReport) -> str | None:
    """The outcome one phase report stands for (None: a passed setup/teardown)."""
    wasxfail = hasattr(rep, "wasxfail")
    if rep.passed:
        if rep.when == "call":
            return "xpassed" if wasxfail else "passed"
        return None
    if rep.skipped:
        return "xfailed" if wasxfail else "skipped"
    if rep.when == "call":
        return "failed"
    if rep.when == "???":
        return "failed"
    return "error"


def _message(rep: pytest.TestReport, limit: int = 500) -> str:
    longrepr = rep.longrepr
    text = ""
    if getattr(rep, "wasxfail", ""):  # xfailed: the xfail reason says more than the assert
        longrepr = None
        text = str(rep.wasxfail)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2])
        text = text[len("Skipped: "):] if text.startswith("Skipped: ") else text
    elif longrepr is not None:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or "") if crash is not None else ""
        if not text:
            lines = [ln for ln in str(longrepr).strip().splitlines() if ln.strip()]
            text = lines[-1] if lines else ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- test ids without the build ---------------------------------------------------------


def strip_build(nodeid: str, builds: Iterable[str]) -> str:
    """*nodeid* with the build's parametrization id removed.

    ``suites/t.py::test_open[b72-file-rw]`` -> ``suites/t.py::test_open[file-rw]``;
    ``...::test_smoke[b72]`` -> ``...::test_smoke``. The first build name found as a
    whole ``-``-separated part of the id is removed (names may contain ``-``).
    """
    base, bracket, params = nodeid.partition("[")
    if not bracket or not params.endswith("]"):
        return nodeid
    params = params[:-1]
    for build in builds:
        if not build or build == MISSING:
            continue
        m = re.search(r"(?:^|-)" + re.escape(build) + r"(?=-|$)", params)
        if m is None:
            continue
        start, end = m.span()
        if start == 0 and end < len(params):
            end += 1  # "b72-file" -> "file"
        rest = params[:start] + params[end:]
        return f"{base}[{rest}]" if rest else base
    return nodeid


# -- the plugin -------------------------------------------------------------------------------


class MatrixReport:
    """Collects one outcome per item; prints the matrix; writes ``--qb-results``."""

    def __init__(self, config: pytest.Config,
                 resolved_builds: Callable[[], Sequence[Any]] = lambda: ()) -> None:
        self.config = config
        #: the builds this process has resolved (never resolves one just for the report)
        self._resolved_builds = resolved_builds
        self.is_worker = hasattr(config, "workerinput")
        self.results_path: str | None = config.getoption("--qb-results", None)
        self.show_summary = not config.getoption("--qb-no-summary", False)
        self.cases: dict[str, CaseResult] = {}
        self.collect_errors: list[str] = []
        self.session_procs: Counter[str] = Counter()
        self.builds: dict[str, dict[str, Any]] = {}
        self.workers = 0
        self.started = time.time()
        self.duration = 0.0
        self.exitstatus: int | None = None
        self.written: Path | None = None
        self.write_error: str | None = None
        self._counter = _ProcCounter() if self.results_path else None
        self._previous_counter: _ProcCounter | None = None

    # -- lifecycle ---------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.started = time.time()
        if self._counter is not None:
            self._previous_counter = _active_counter  # an outer session (pytester inline run)
            _activate_counter(self._counter)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        # Whatever ran between items (collection, session set-up) is not a case's.
        if self._counter is not None and not self.is_worker_proxy:
            self.session_procs.update(self._counter.take())

    @property
    def is_worker_proxy(self) -> bool:
        # On an xdist controller logstart is replayed from the workers' events.
        return not self.is_worker and self.workers > 0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        rep = yield
        if self._counter is not None:
            started = self._counter.take()
            if started:
                rep.qb_procs = started
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
        self.exitstatus = int(exitstatus)
        if self._counter is not None:
            self.session_procs.update(self._counter.take())
        for name, info in self._local_builds().items():
            self.builds.setdefault(name, info)
        if self.is_worker:
            out = self.config.workeroutput  # type: ignore[attr-defined]
            out["qemublock_builds"] = self.builds
            out["qemublock_session_procs"] = dict(self.session_procs)
            return
        self._junit_properties()
        if self.results_path:
            path = self.config.invocation_params.dir / self.results_path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(json.dumps(self.results(), indent=1, sort_keys=False) + "\n",
                               encoding="utf-8")
                tmp.replace(path)
                self.written = path
            except OSError as e:
                self.write_error = f"cannot write {path}: {e}"

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._counter is not None and _active_counter is self._counter:
            _activate_counter(self._previous_counter)

    # -- helpers -------------------------------------------------------------------
    def build_order(self) -> list[str]:
        from ..qemu.build import build_names

        return build_names(self.config.getoption("--qemu-build", None) or [])

    def _local_builds(self) -> dict[str, dict[str, Any]]:
        """Builds this process has resolved (never resolves one just for the report)."""
        out = {}
        for b in self._resolved_builds():
            try:
                out[b.name] = {"version": b.version_str,
                               "qemu_system": str(b.binaries["system"].path),
                               "version_line": b.binaries["system"].version_line}
            except Exception:  # noqa: BLE001 - a report must not fail the run
                continue
        return out

    def _junit_properties(self) -> None:
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
        build = case.axis("build")
        if build != MISSING:
            return build
        order = self.build_order()
        if len(order) > 1:
            for name in order:
                if strip_build(case.nodeid, [name]) != case.nodeid:
                    return name
        if len(order) == 1:
            return order[0]
        if len(self.builds) == 1:
            return next(iter(self.builds))
        return MISSING

    def qb_cases(self) -> list[CaseResult]:
        return [c for c in self.cases.values() if c.has_axes and c.outcome is not None]

    def matrix(self) -> dict[tuple[str, str, str], Counter[str]]:
        cells: dict[tuple[str, str, str], Counter[str]] = {}
        for c in self.qb_cases():
            key = (self.case_build(c), c.axis("scenario"), c.axis("backend"))
            cells.setdefault(key, Counter())[c.outcome or "error"] += 1
        return cells

    def results(self) -> dict[str, Any]:
        order = self.build_order()
        case_builds = {nodeid: self.case_build(case) for nodeid, case in self.cases.items()}
        # The build is part of the test id only when several builds ran.
        several = len(order) > 1 or len(set(case_builds.values()) - {MISSING}) > 1
        tests = {}
        for nodeid, case in self.cases.items():
            d = case.to_json()
            d["build"] = case_builds[nodeid]
            d["case"] = strip_build(nodeid, [d["build"], *order]) if several else nodeid
            tests[nodeid] = d
        totals = Counter(t["outcome"] for t in tests.values())
        procs: Counter[str] = Counter()
        for case in self.cases.values():
            procs.update(case.procs)
        return {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "created": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "duration": round(self.duration, 3),
            "exitstatus": self.exitstatus,
            "args": [str(a) for a in self.config.invocation_params.args],
            "workers": self.workers,
            "build_order": order,
            "builds": self.builds,
            "totals": {o: totals[o] for o in OUTCOMES if totals[o]},
            "matrix": [
                {"build": b, "scenario": s, "backend": k,
                 "counts": {o: n[o] for o in OUTCOMES if n[o]}}
                for (b, s, k), n in sorted(self.matrix().items())
            ],
            "procs": {"tests": dict(sorted(procs.items())),
                      "outside_tests": dict(sorted(self.session_procs.items())),
                      "counted": self._counter is not None},
            "collect_errors": self.collect_errors,
            "tests": tests,
        }

    # -- terminal output ------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        if self.show_summary and self.qb_cases():
            unicode = _can_encode(tr, _SYMBOLS["passed"] + _EMPTY + _ELLIPSIS + "×")
            builds = self._ordered_builds()
            title, lines = render_matrix(self.matrix(), builds, self.builds,
                                         width=max(60, tr._tw.fullwidth), unicode=unicode)
            tr.write_sep("-", title)
            for line in lines:
                for text, style in line:
                    tr.write(text, **style)
                tr.write("\n")
            if len(builds) > 1:
                for line in self._build_differences(builds):
                    tr.write_line(line)
        if self.written is not None:
            tr.write_line(f"qemublock: results written to {self.written}")
        if self.write_error:
            tr.write_line(f"qemublock: {self.write_error}", red=True)

    def _ordered_builds(self) -> list[str]:
        present = {b for b, _, _ in self.matrix()}
        order = [b for b in self.build_order() if b in present]
        return order + sorted(present - set(order))

    def _build_differences(self, builds: list[str]) -> list[str]:
        by_case: dict[str, dict[str, str]] = {}
        for c in self.qb_cases():
            b = self.case_build(c)
            by_case.setdefault(strip_build(c.nodeid, [b]), {})[b] = c.outcome or "error"
        # Cases that fail on some build first, then the rest (skips, xfails...).
        differ = sorted((k for k, v in by_case.items() if len(v) > 1 and len(set(v.values())) > 1),
                        key=lambda k: (not set(by_case[k].values()) & set(FAILING), k))
        if not differ:
            return [f"same outcome on all {len(builds)} builds for every case"]
        lines = [f"outcome differs between builds for {len(differ)} case(s):"]
        for k in differ[:8]:
            v = by_case[k]
            lines.append(f"  {k}: " + ", ".join(f"{b} {v[b]}" for b in builds if b in v))
        if len(differ) > 8:
            lines.append(f"  ... and {len(differ) - 8} more")
        diff = f"qemublock-diff {self.results_path or 'RESULTS.json'} --builds {builds[0]} {builds[1]}"
        lines.append(f"  (all of them: {diff}" + ("" if self.results_path else
                                                   ", after a run with --qb-results RESULTS.json") + ")")
        return lines


def _can_encode(tr: Any, text: str) -> bool:
    f = getattr(tr._tw, "_file", None) or sys.stdout
    encoding = getattr(f, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


# -- rendering the matrix ----------------------------------------------------------------------

Segment = tuple[str, dict[str, bool]]


def cell_text(counts: Mapping[str, int], unicode: bool = True) -> str:
    symbols = _SYMBOLS if unicode else _ASCII_SYMBOLS
    parts = [f"{counts[o]}{symbols[o]}" for o in OUTCOMES if counts.get(o)]
    return " ".join(parts) if parts else (_EMPTY if unicode else _ASCII_EMPTY)


def cell_style(counts: Mapping[str, int]) -> dict[str, bool]:
    if counts.get("failed") or counts.get("error"):
        return {"red": True, "bold": True}
    if counts.get("xpassed"):
        return {"yellow": True}
    if counts.get("passed"):
        return {"green": True}
    return {}


def _fit(text: str, width: int, unicode: bool) -> str:
    if len(text) <= width:
        return text
    ell = _ELLIPSIS if unicode else _ASCII_ELLIPSIS
    return text[: max(0, width - 1)] + ell


def _wrap_header(name: str, width: int, unicode: bool) -> list[str]:
    """*name* on at most two lines of *width*, broken after a separator if possible."""
    if len(name) <= width:
        return [name]
    cut = max((name.rfind(sep, 0, width + 1) for sep in "-_+./:"), default=-1)
    if cut <= 0:
        first, rest = name[:width], name[width:]
    else:
        first, rest = name[: cut + 1], name[cut + 1:]
    return [first, _fit(rest, width, unicode)]


@dataclass
class _Plan:
    row_axis: str
    col_axis: str
    rows: list[str]
    cols: list[str]
    row_w: int
    build_w: int
    col_w: dict[str, int]
    chunks: list[list[str]]


_GAP = 2
_TOTAL = "(all)"


def _plan(cells: Mapping[tuple[str, str, str], Mapping[str, int]], builds: Sequence[str],
          transpose: bool, width: int, unicode: bool) -> _Plan:
    row_axis, col_axis = ("backend", "scenario") if transpose else ("scenario", "backend")
    keyed = {(b, k if transpose else s, s if transpose else k): n for (b, s, k), n in cells.items()}
    rows = sorted({r for _, r, _ in keyed})
    cols = sorted({c for _, _, c in keyed})
    multi = len(builds) > 1
    texts = [(c, cell_text(n, unicode)) for (_, _, c), n in keyed.items()]
    totals: dict[tuple[str, str], Counter[str]] = {}
    for (b, _, c), n in keyed.items():
        totals.setdefault((b, c), Counter()).update(n)
    if len(rows) > 1:
        texts += [(c, cell_text(n, unicode)) for (_, c), n in totals.items()]
    cell_w = {c: max([len(t) for cc, t in texts if cc == c] + [1]) for c in cols}
    row_w = max([len(row_axis), len(_TOTAL)] + [len(r) for r in rows])
    build_w = max([len("build")] + [len(b) for b in builds]) if multi else 0

    def label_w() -> int:
        return row_w + _GAP + (build_w + _GAP if multi else 0)

    # Whole column names if they fit; else a long name widens its column up to
    # 12 characters and wraps onto a second header line.
    col_w = {c: max(cell_w[c], len(c)) for c in cols}
    if label_w() + sum(w + _GAP for w in col_w.values()) - _GAP > width:
        col_w = {c: max(cell_w[c], min(len(c), 12)) for c in cols}

    widest = max(col_w.values(), default=0)
    while label_w() + widest > width and row_w > 12:
        row_w -= 1
    if label_w() + sum(w + _GAP for w in col_w.values()) - _GAP > width:
        row_w = max(12, min(row_w, 28))
    chunks: list[list[str]] = []
    current: list[str] = []
    used = label_w()
    for c in cols:
        if current and used + col_w[c] > width:
            chunks.append(current)
            current, used = [], label_w()
        current.append(c)
        used += col_w[c] + _GAP
    if current:
        chunks.append(current)
    return _Plan(row_axis, col_axis, rows, cols, row_w, build_w, col_w, chunks)


def render_matrix(cells: Mapping[tuple[str, str, str], Mapping[str, int]], builds: Sequence[str],
                  build_info: Mapping[str, Mapping[str, Any]] | None = None, width: int = 100,
                  unicode: bool = True, orientation: str = "auto"
                  ) -> tuple[str, list[list[Segment]]]:
    """The matrix as a title and lines of (text, markup) segments, none wider than *width*.

    *cells* maps (build, scenario, backend) to outcome counts. Rows are
    scenarios and columns backends, unless that table is too wide and the
    transposed one is not (many backends, few scenarios): then rows are
    backends. With several builds each row has one sub-row per build.
    Columns that still do not fit go into further tables below.
    """
    build_info = build_info or {}
    multi = len(builds) > 1
    if orientation == "auto":
        normal = _plan(cells, builds, False, width, unicode)
        plan = normal
        if len(normal.chunks) > 1:
            other = _plan(cells, builds, True, width, unicode)
            if len(other.chunks) < len(normal.chunks):
                plan = other
    else:
        plan = _plan(cells, builds, orientation == "backend", width, unicode)
    transpose = plan.row_axis == "backend"
    keyed = {(b, k if transpose else s, s if transpose else k): n for (b, s, k), n in cells.items()}
    totals: dict[tuple[str, str], Counter[str]] = {}
    for (b, _, c), n in keyed.items():
        totals.setdefault((b, c), Counter()).update(n)

    sym = _SYMBOLS if unicode else _ASCII_SYMBOLS
    empty = _EMPTY if unicode else _ASCII_EMPTY
    times = "×" if unicode else "x"
    title = f"qemublock matrix: {plan.row_axis} {times} {plan.col_axis}" + (
        f" {times} build" if multi else "")
    out: list[list[Segment]] = []
    legend = "legend: " + "  ".join(f"{sym[o]} {o}" for o in OUTCOMES) + f"  {empty} none"
    out.append([(_fit(legend, width, unicode), {})])
    if builds and list(builds) != [MISSING]:
        desc = ", ".join(f"{b} = QEMU {build_info[b]['version']}" if b in build_info
                         and build_info[b].get("version") else b for b in builds)
        out.append([(_fit(("builds: " if multi else "build: ") + desc, width, unicode), {})])

    label_w = plan.row_w + _GAP + (plan.build_w + _GAP if multi else 0)
    for ci, chunk in enumerate(plan.chunks):
        if len(plan.chunks) > 1:
            out.append([(f"{plan.col_axis}s {ci + 1}/{len(plan.chunks)}:", {})])
        headers = {c: _wrap_header(c, plan.col_w[c], unicode) for c in chunk}
        depth = max(len(h) for h in headers.values())
        for row in range(depth):
            last = row == depth - 1
            left = (plan.row_axis if last else "").ljust(plan.row_w + _GAP)
            if multi:
                left += ("build" if last else "").ljust(plan.build_w + _GAP)
            line: list[Segment] = [(left, {"bold": True})]
            for c in chunk:
                h = headers[c]
                text = h[row - (depth - len(h))] if row >= depth - len(h) else ""
                line.append((text.ljust(plan.col_w[c] + _GAP), {"bold": True}))
            out.append(_rstrip(line))
        rows = [(r, b) for r in plan.rows for b in builds
                if any((b, r, c) in keyed for c in plan.cols)]
        if len(plan.rows) > 1:
            rule = min(width, label_w + sum(plan.col_w[c] + _GAP for c in chunk) - _GAP)
            rows += [("", "")] + [(_TOTAL, b) for b in builds]
        previous = None
        for r, b in rows:
            if (r, b) == ("", ""):
                out.append([("-" * rule, {})])
                continue
            shown = _fit(r, plan.row_w, unicode) if r != previous else ""
            previous = r
            left = shown.ljust(plan.row_w + _GAP) + (b.ljust(plan.build_w + _GAP) if multi else "")
            line = [(left, {})]
            for c in chunk:
                counts = totals.get((b, c)) if r == _TOTAL else keyed.get((b, r, c))
                text = cell_text(counts or {}, unicode)
                line.append((text, cell_style(counts or {})))
                line.append((" " * (plan.col_w[c] + _GAP - len(text)), {}))
            out.append(_rstrip(line))
    return title, out


def _rstrip(line: list[Segment]) -> list[Segment]:
    while line and not line[-1][0].strip():
        line.pop()
    if line:
        text, style = line[-1]
        line[-1] = (text.rstrip(), style)
    return line


def render_text(lines: list[list[Segment]]) -> str:
    return "\n".join("".join(t for t, _ in line) for line in lines)


# -- qemublock-diff ---------------------------------------------------------------------------------


class DiffError(Exception):
    pass


def load_results(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise DiffError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise DiffError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise DiffError(f"{path} is not a qemublock results file (written by --qb-results)")
    if data.get("version", 0) > RESULTS_VERSION:
        raise DiffError(f"{path} has results format version {data['version']}; this "
                        f"qemublock-diff reads up to {RESULTS_VERSION}")
    return data


def _test_build(nodeid: str, test: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    build = str(test.get("build") or MISSING)
    if build == MISSING and len(data.get("build_order") or []) == 1:
        return data["build_order"][0]
    return build


@dataclass
class Side:
    label: str
    data: dict[str, Any]
    build: str | None
    tests: dict[str, dict[str, Any]]  # nodeid -> test

    @property
    def builds(self) -> list[str]:
        seen = {_test_build(n, t, self.data) for n, t in self.tests.items()}
        order = [b for b in self.data.get("build_order") or [] if b in seen]
        return order + sorted(seen - set(order))

    def describe(self) -> str:
        builds = self.builds
        info = self.data.get("builds") or {}
        parts = [f"{b} (QEMU {info[b]['version']})" if b in info and info[b].get("version")
                 else b for b in builds if b != MISSING]
        totals = Counter(str(t.get("outcome")) for t in self.tests.values())
        counts = ", ".join(f"{totals[o]} {o}" for o in OUTCOMES if totals[o])
        where = f" build {', '.join(parts)}" if parts else ""
        return f"{self.label}:{where}: {len(self.tests)} cases ({counts or 'none'})"


def _side(label: str, data: dict[str, Any], build: str | None) -> Side:
    tests = data.get("tests") or {}
    if build is not None:
        available = sorted({_test_build(n, t, data) for n, t in tests.items()})
        tests = {n: t for n, t in tests.items() if _test_build(n, t, data) == build}
        if not tests:
            raise DiffError(f"{label} has no cases of build {build!r} "
                            f"(builds there: {', '.join(available) or 'none'})")
    return Side(label, data, build, dict(tests))


def _file_builds(data: Mapping[str, Any]) -> set[str]:
    return {_test_build(n, t, data) for n, t in (data.get("tests") or {}).items()}


def _keyed(side: Side, with_build: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """The side's tests keyed by case id (the test id without the build's id part)."""
    multi = len(_file_builds(side.data)) > 1 or len(side.data.get("build_order") or []) > 1
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for nodeid, t in side.tests.items():
        build = _test_build(nodeid, t, side.data)
        case = t.get("case") or (strip_build(nodeid, [build]) if multi else nodeid)
        out[f"{case} @{build}" if with_build else case] = (nodeid, t)
    return out


def diff_results(a: Side, b: Side, with_build: bool) -> dict[str, Any]:
    ka, kb = _keyed(a, with_build), _keyed(b, with_build)
    changed, new, missing = [], [], []
    unchanged = 0
    for key in sorted(set(ka) | set(kb)):
        if key not in kb:
            missing.append((key, ka[key][1]["outcome"], None))
        elif key not in ka:
            new.append((key, None, kb[key][1]["outcome"]))
        elif ka[key][1]["outcome"] != kb[key][1]["outcome"]:
            changed.append((key, ka[key][1]["outcome"], kb[key][1]["outcome"]))
        else:
            unchanged += 1
    regressions = [c for c in changed if c[1] in PASSING and c[2] in FAILING]
    fixed = [c for c in changed if c[1] in FAILING and c[2] in PASSING]
    return {"changed": changed, "new": new, "missing": missing, "unchanged": unchanged,
            "regressions": regressions, "fixed": fixed, "a": ka, "b": kb}


def diff_main(argv: Sequence[str] | None = None) -> int:
    """``qemublock-diff``: what changed between two results files or two builds."""
    p = argparse.ArgumentParser(
        prog="qemublock-diff",
        description="Compare qemublock results files (pytest --qb-results FILE): "
                    "cases are matched by test id without the build's id part. "
                    "Exit status 1 if a case that passed in A fails (or errors) in B.")
    p.add_argument("files", nargs="+", metavar="FILE", help="A.json [B.json]")
    p.add_argument("--builds", nargs=2, metavar=("A", "B"),
                   help="compare build A (of the first file) with build B (of the second "
                        "file, or of the same file when only one is given)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the failure/skip message of each changed case in B")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    args = p.parse_args(argv)
    if len(args.files) > 2:
        p.error("give one or two results files")
    try:
        first = load_results(args.files[0])
        second = load_results(args.files[1]) if len(args.files) == 2 else first
        name_a = args.files[0]
        name_b = args.files[1] if len(args.files) == 2 else args.files[0]
        if args.builds:
            build_a, build_b = args.builds
        elif len(args.files) == 1:
            builds = _side("A", first, None).builds
            if len(builds) != 2:
                raise DiffError(f"{name_a} has builds {', '.join(builds) or 'none'}: "
                                f"say which two to compare with --builds A B")
            build_a, build_b = builds
        else:
            build_a = build_b = None
        a = _side(f"A {name_a}", first, build_a)
        b = _side(f"B {name_b}", second, build_b)
        with_build = False
        if build_a is None:
            ma, mb = len(a.builds) > 1, len(b.builds) > 1
            if ma and mb:
                with_build = True  # same builds, two runs: compare build by build
            elif ma or mb:
                raise DiffError(f"A has builds {', '.join(a.builds)}, B has {', '.join(b.builds)}: "
                                f"pick one of each with --builds A B")
    except DiffError as e:
        print(f"qemublock-diff: error: {e}", file=sys.stderr)
        return 2
    d = diff_results(a, b, with_build)
    if args.json:
        print(json.dumps({
            "a": a.label, "b": b.label, "unchanged": d["unchanged"],
            **{k: [{"case": c, "a": x, "b": y} for c, x, y in d[k]]
               for k in ("changed", "regressions", "fixed", "new", "missing")},
        }, indent=1))
        return 1 if d["regressions"] else 0
    print(a.describe())
    print(b.describe())
    print(f"changed: {len(d['changed'])} (regressions: {len(d['regressions'])}, "
          f"fixed: {len(d['fixed'])}), new: {len(d['new'])}, missing: {len(d['missing'])}, "
          f"unchanged: {d['unchanged']}")

    def show(title: str, rows: list[tuple[str, str | None, str | None]]) -> None:
        if not rows:
            return
        print(f"{title}:")
        for key, x, y in rows:
            print(f"{key}: {x or '(absent)'} -> {y or '(absent)'}")
            if args.verbose and key in d["b"]:
                msg = d["b"][key][1].get("message")
                if msg:
                    print(f"    {msg}")

    shown = set(c[0] for c in d["regressions"] + d["fixed"])
    show("regressions (passed in A, fail in B)", d["regressions"])
    show("fixed (failed in A, pass in B)", d["fixed"])
    show("other changes", [c for c in d["changed"] if c[0] not in shown])
    show("new in B", d["new"])
    show("missing from B", d["missing"])
    return 1 if d["regressions"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(diff_main())
