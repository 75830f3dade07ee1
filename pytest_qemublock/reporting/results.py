"""The ``--qb-results`` file: one JSON document per run, described in ``docs/report.md``.

:func:`results_document` builds it from the folded cases, :func:`write_results`
writes it atomically, :func:`load_results` reads one back and checks that it is
a results file this version understands.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fold import MISSING, OUTCOMES, CaseResult, Cells, strip_build

RESULTS_FORMAT = "qemublock-results"
#: Bumped only when a reader of the previous version would misread a file.
RESULTS_VERSION = 1


class ResultsError(Exception):
    """A results file cannot be read or is not one."""


@dataclass
class RunInfo:
    """What the results file says about the run as a whole."""

    started: float
    duration: float
    exitstatus: int | None
    args: list[str]
    workers: int
    build_order: list[str]
    builds: Mapping[str, Mapping[str, Any]]
    session_procs: Mapping[str, int] = field(default_factory=dict)
    counted: bool = True
    collect_errors: list[str] = field(default_factory=list)
    #: this run's part of a sharded run (``--qb-shard``), see scenario/shards.py
    shard: Mapping[str, Any] | None = None


def results_document(cases: Mapping[str, CaseResult], case_builds: Mapping[str, str],
                     cells: Cells, run: RunInfo) -> dict[str, Any]:
    """The results file's content; *case_builds* maps each nodeid to its build."""
    order = run.build_order
    # The build is part of the test id only when several builds ran.
    several = len(order) > 1 or len(set(case_builds.values()) - {MISSING}) > 1
    tests = {}
    for nodeid, case in cases.items():
        d = case.to_json()
        d["build"] = case_builds[nodeid]
        d["case"] = strip_build(nodeid, [d["build"], *order]) if several else nodeid
        tests[nodeid] = d
    totals = Counter(t["outcome"] for t in tests.values())
    procs: Counter[str] = Counter()
    for case in cases.values():
        procs.update(case.procs)
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "created": datetime.fromtimestamp(run.started, UTC).isoformat(timespec="seconds"),
        "duration": round(run.duration, 3),
        "exitstatus": run.exitstatus,
        "args": run.args,
        "workers": run.workers,
        "build_order": order,
        "builds": run.builds,
        "totals": {o: totals[o] for o in OUTCOMES if totals[o]},
        "matrix": [
            {"build": b, "scenario": s, "backend": k,
             "counts": {o: n[o] for o in OUTCOMES if n[o]}}
            for (b, s, k), n in sorted(cells.items())
        ],
        "procs": {"tests": dict(sorted(procs.items())),
                  "outside_tests": dict(sorted(run.session_procs.items())),
                  "counted": run.counted},
        "collect_errors": run.collect_errors,
        **({"shard": dict(run.shard)} if run.shard else {}),
        "tests": tests,
    }


def write_results(path: Path, document: Mapping[str, Any]) -> None:
    """Write *document* to *path* through a temporary file, so that a reader never
    sees half a file; raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_json(path: str) -> Any:
    """A JSON file's content; raises :class:`ResultsError` (one line) if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ResultsError(f"{path} is not JSON: {e}") from None


def load_results(path: str) -> dict[str, Any]:
    """A results file's content; raises :class:`ResultsError` if it is not one, or is
    of a newer version."""
    data = load_json(path)
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path} is not a qemublock results file (written by --qb-results)")
    if data.get("version", 0) > RESULTS_VERSION:
        raise ResultsError(f"{path} has results format version {data['version']}; this "
                           f"pytest-qemublock reads up to {RESULTS_VERSION}")
    return data


def entry_build(test: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The build of one entry of ``tests`` (files of a single build may leave it out)."""
    build = str(test.get("build") or MISSING)
    if build == MISSING and len(data.get("build_order") or []) == 1:
        return str(data["build_order"][0])
    return build
