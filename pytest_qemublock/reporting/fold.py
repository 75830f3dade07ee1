"""One outcome per case, folded from its setup/call/teardown reports.

Suite items carry their coordinates as ``user_properties``: ``qb.scenario``,
``qb.backend``, ``qb.format``, ``qb.build`` and ``qb.interface`` (any may be
missing). A :class:`CaseResult` keeps them with the folded outcome, the phase
durations and the processes the case started.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

PREFIX = "qb."
AXES = ("scenario", "backend", "format", "build", "interface")
MISSING = "-"

#: Outcomes, in the order the matrix cells list them.
OUTCOMES = ("passed", "failed", "error", "xpassed", "xfailed", "skipped")
FAILING = ("failed", "error")
PASSING = ("passed", "xpassed")
#: the outcomes whose results-file entry carries the failure text and the evidence
EXPLAINED = ("failed", "error", "xfailed")

#: (build, scenario, backend) -> outcome counts
Cells = dict[tuple[str, str, str], Counter[str]]


def is_qemu(program: str) -> bool:
    """A QEMU program (qemu-system-*, qemu-img, qemu-nbd...), counted as ``qemu_procs``."""
    return program.startswith("qemu")


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
    #: the whole failure (or xfail) text, and the evidence the plugin attached (``qb_evidence``)
    details: str = ""
    evidence: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return sum(self.phases.values())

    def axis(self, name: str) -> str:
        """The case's coordinate on axis *name* (``-`` when not set)."""
        value = self.properties.get(PREFIX + name)
        return MISSING if value in (None, "") else str(value)

    @property
    def has_axes(self) -> bool:
        return any(k.startswith(PREFIX) and k[len(PREFIX):] in AXES for k in self.properties)

    @property
    def qemu_procs(self) -> int:
        return sum(n for p, n in self.procs.items() if is_qemu(p))

    def add(self, rep: pytest.TestReport) -> None:
        """Fold one phase report in."""
        # xdist reports an item whose worker crashed with when="???" (outside pytest's Literal)
        when: str = rep.when or "???"
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
                    if not self.message:
                        self._explain(rep)
            if self.outcome is None:  # e.g. a crashed worker's item
                self.outcome = outcome
            return
        if outcome is None:
            return  # a passed setup: the call decides
        if self.outcome in FAILING and outcome not in FAILING:
            return
        self.outcome = outcome
        if outcome not in PASSING:
            self._explain(rep)
        if when == "???":  # xdist's report for an item whose worker crashed
            self.finished = True

    def _explain(self, rep: pytest.TestReport) -> None:
        self.message = message_of(rep)
        self.details = details_of(rep)
        self.evidence = getattr(rep, "qb_evidence", None) or self.evidence

    def to_json(self) -> dict[str, Any]:
        """The case's entry in the results file, without ``build`` and ``case``."""
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
        if d["outcome"] in EXPLAINED:  # green cases stay small
            if self.details and self.details != self.message:
                d["details"] = self.details
            if self.evidence:
                d["evidence"] = self.evidence
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
    if rep.when == "call" or str(rep.when) == "???":  # "???": a crashed xdist worker's item
        return "failed"
    return "error"


def message_of(rep: pytest.TestReport, limit: int = 500) -> str:
    """The short reason of a failure, error, skip or xfail, on one line."""
    longrepr = rep.longrepr
    text = ""
    if getattr(rep, "wasxfail", ""):  # xfailed: the xfail reason says more than the assert
        longrepr = None
        text = str(rep.wasxfail)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        text = str(longrepr[2]).removeprefix("Skipped: ")
    elif longrepr is not None:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or "") if crash is not None else ""
        if not text:
            lines = [ln for ln in str(longrepr).strip().splitlines() if ln.strip()]
            text = lines[-1] if lines else ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def details_of(rep: pytest.TestReport, limit: int = 4000) -> str:
    """The whole text of a failure, error or xfail (the exception's message, all its
    lines; a skip's reason), bounded to *limit* characters, the end kept."""
    longrepr = rep.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    elif longrepr is None:
        text = str(getattr(rep, "wasxfail", ""))
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(getattr(crash, "message", "") or "") if crash is not None else ""
        if not text:
            text = str(longrepr)
    text = text.strip()
    if getattr(rep, "wasxfail", "") and text.partition(":")[0].endswith("XFailed"):
        return ""  # pytest.xfail(reason): the message says it all
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


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


def case_build(case: CaseResult, order: list[str], known: Iterable[str]) -> str:
    """The build *case* ran on: its ``qb.build``, else the build named in its id
    (*order*: the ``--qemu-build`` names), else the only build there is."""
    build = case.axis("build")
    if build != MISSING:
        return build
    if len(order) > 1:
        for name in order:
            if strip_build(case.nodeid, [name]) != case.nodeid:
                return name
    if len(order) == 1:
        return order[0]
    known = list(known)
    if len(known) == 1:
        return known[0]
    return MISSING


def matrix_cells(cases: Iterable[CaseResult], build_of: Callable[[CaseResult], str]) -> Cells:
    """Outcome counts per (build, scenario, backend) of the cases that have ``qb.*`` axes."""
    cells: Cells = {}
    for c in cases:
        if c.has_axes and c.outcome is not None:
            key = (build_of(c), c.axis("scenario"), c.axis("backend"))
            cells.setdefault(key, Counter())[c.outcome] += 1
    return cells
